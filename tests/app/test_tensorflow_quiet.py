"""TensorFlow's C++ start-up lines (oneDNN's notice, absl's "before InitializeLog") stay off stderr when
TF_CPP_MIN_LOG_LEVEL asks for quiet (`import_tensorflow_quietly`, used by the model's loading and by
`python -m training`), and stderr works again after the import."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO_ROOT

NOISE = ("oneDNN custom operations", "absl::InitializeLog")
LOAD = "from pneumonia.model import import_tensorflow_quietly; import_tensorflow_quietly(); import keras; print('ok')"


def run(code: str, level: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": level}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300
    )


def test_the_start_up_lines_are_dropped_only_when_quiet_is_asked_for():
    loud = run(LOAD, "0")
    assert loud.stdout.strip() == "ok" and any(line in loud.stderr for line in NOISE)  # they exist to be dropped
    quiet = run(LOAD, "3")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok"
    assert not any(line in quiet.stderr for line in NOISE), quiet.stderr


def test_stderr_works_again_after_the_import():
    after = run(LOAD + "; import sys; print('still here', file=sys.stderr)", "3")
    assert "still here" in after.stderr
