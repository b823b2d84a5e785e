"""A training run directory: every artifact name, and the one reader of each artifact.

RUN_DIR/
    config.json    the validated TrainConfig                split.csv   every image, its patient and subset
    data.json      dataset root, provenance (card, content hash), split method, counts, skipped files
    training.log
    models/<backbone>/  best.keras, history.csv, done.json, evaluation.json, predictions.npz, plots
    comparison.{md,csv,json}   all backbones side by side; the best is chosen by validation ROC-AUC
    gradcam_grid_<backbone>.png

Only light modules are imported here (no TensorFlow, matplotlib or scikit-learn), so any command can learn
where a file lives without paying for the heavy stack.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from training.config import TrainConfig, load_config
from training.data import Sample, read_split

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
SPLIT_FILE = "split.csv"
LOG_FILE = "training.log"
MODELS_DIR = "models"
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"
COMPARISON_JSON = "comparison.json"

# per model, under models/<backbone>/
BEST_CHECKPOINT = "best.keras"
DONE_MARKER = "done.json"
HISTORY_CSV = "history.csv"
SPENT_SECONDS = "spent_seconds.txt"
EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.npz"

# what `publish` copies: small, reviewable evidence (no checkpoints, no predictions)
PUBLISHED_FILES = (CONFIG_FILE, DATA_FILE, SPLIT_FILE, LOG_FILE, COMPARISON_MD, COMPARISON_CSV, COMPARISON_JSON)
PUBLISHED_MODEL_FILES = (HISTORY_CSV, DONE_MARKER, EVALUATION_FILE, "*.png")


def gradcam_grid_file(backbone: str) -> str:
    return f"gradcam_grid_{backbone}.png"


def read_config(run_dir: Path) -> TrainConfig:
    return load_config(run_dir / CONFIG_FILE, {})


def read_data_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / DATA_FILE).read_text())


def write_data_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / DATA_FILE).write_text(json.dumps(summary, indent=2))


def read_run_split(run_dir: Path, data_dir: Path | None = None) -> dict[str, list[Sample]]:
    """The run's recorded split, on the dataset at `data_dir` (default: where the run was trained)."""
    return read_split(run_dir / SPLIT_FILE, Path(data_dir or read_data_summary(run_dir)["data_dir"]))


def model_dir(run_dir: Path, backbone: str) -> Path:
    return run_dir / MODELS_DIR / backbone


def model_dirs(run_dir: Path) -> dict[str, Path]:
    root = run_dir / MODELS_DIR
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}


def read_history(model_dir: Path) -> list[dict[str, float]]:
    """history.csv (Keras' CSVLogger), one dict per epoch; empty cells (a metric not logged) are left out."""
    path = model_dir / HISTORY_CSV
    if not path.is_file():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def read_training_summary(model_dir: Path) -> dict[str, Any]:
    """done.json: what `fit` recorded for a finished model; empty while it is not finished."""
    path = model_dir / DONE_MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def read_evaluation(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / EVALUATION_FILE).read_text())


def read_comparison(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / COMPARISON_JSON).read_text())
