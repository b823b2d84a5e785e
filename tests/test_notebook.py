"""notebooks/walkthrough.ipynb runs end to end on the committed samples: load, train, evaluate, export, serve,
/predict, /explain, /model. Executed with nbclient in a real kernel; any failing cell fails the test."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pneumonia.bundle import RESEARCH_DISCLAIMER

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
CELL_TIMEOUT_S = 300  # about a minute in all on an idle machine; generous for a loaded CI runner


@pytest.mark.tensorflow  # trains, exports and explains in the kernel
def test_walkthrough_runs_on_the_committed_samples(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA", raising=False)  # the kernel inherits this process's environment
    monkeypatch.setenv("WALKTHROUGH_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, when any cell errors

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 5, "the four evaluation plots and the Grad-CAM overlay were not displayed"
    assert (tmp_path / "bundle" / "model.onnx").is_file() and (tmp_path / "run" / "comparison.md").is_file()
    text = "".join(output.get("text", "") for output in outputs)
    assert RESEARCH_DISCLAIMER in text  # printed from the /predict response


def test_walkthrough_is_committed_with_outputs_cleared():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
