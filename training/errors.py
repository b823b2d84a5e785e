"""The one base class of every error a user of `python -m training` can fix (bad flags, files, data, runs)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Reported by the command line as one `error: ...` line with exit code 2, never as a traceback."""
