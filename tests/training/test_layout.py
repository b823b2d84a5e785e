"""training.layout is the one home of run-directory facts: light to import, no cycle, history parsed once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.layout import HISTORY_CSV, read_history

BLOCK_TENSORFLOW = "import sys; sys.modules.update(tensorflow=None, keras=None, tf2onnx=None); "


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module", ["training.layout", "training.report", "training.run", "training.cli"])
def test_imports_without_tensorflow(module):
    """A file name or a plot must not cost a TensorFlow import (here: any import of it fails)."""
    result = _python(BLOCK_TENSORFLOW + f"import {module}")
    assert result.returncode == 0, result.stderr[-2000:]


def test_export_does_not_import_evaluation_or_training():
    result = _python(
        BLOCK_TENSORFLOW.replace("keras=None, ", "").replace(  # export builds models with keras, which needs TensorFlow
            "tensorflow=None, ", ""
        )
        + "import training.export; "
        "print(sorted(m for m in ('training.evaluate', 'training.fit', 'training.report') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_evaluate_does_not_import_run():
    """The evaluate <-> run cycle is gone: evaluate reads the run through training.layout."""
    result = _python("import sys, training.evaluate; print('training.run' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_history_is_read_per_epoch_without_empty_cells(tmp_path):
    (tmp_path / HISTORY_CSV).write_text("epoch,auc,loss,val_auc\n0,0.6,0.9,0.55\n1,0.7,0.8,\n")
    assert read_history(tmp_path) == [
        {"epoch": 0.0, "auc": 0.6, "loss": 0.9, "val_auc": 0.55},
        {"epoch": 1.0, "auc": 0.7, "loss": 0.8},
    ]
    assert read_history(tmp_path / "missing") == []
