"""The one base class of every error a user of `python -m training` can fix (bad flags, files, data, runs), and
the error of writing a bundle: export, onnx_export and bundle_checks all raise it, so it lives here, below all
three, and none of them imports another to raise it."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Reported by the command line as one `error: ...` line with exit code 2, never as a traceback."""


class ExportError(TrainingError):
    pass
