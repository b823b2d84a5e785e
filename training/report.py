"""Reports: per-model plots, the comparison table (Markdown, CSV, JSON) and the Grad-CAM grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

from pneumonia.labels import positive_mask

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from training.errors import TrainingError
from training.layout import (
    BEST_CHECKPOINT,
    COMPARISON_CSV,
    COMPARISON_JSON,
    COMPARISON_MD,
    PREDICTIONS_FILE,
    read_history,
)
from training.metrics import reliability_curve

COMPARISON_COLUMNS = (
    ("backbone", "Backbone"),
    ("image_size", "Image px"),
    ("epochs_run", "Epochs"),
    ("train_minutes", "Train min"),
    ("parameters_m", "Params (M)"),
    ("val_roc_auc", "Val ROC-AUC [95% CI]"),
    ("val_pr_auc", "Val PR-AUC"),
    ("threshold", "Threshold"),
    ("val_sensitivity", "Val sensitivity"),
    ("val_specificity", "Val specificity"),
    ("val_ece", "Val ECE"),
    ("stress_min_auc", "Stress min AUC"),
)


class ReportError(TrainingError):
    pass


def _fmt_ci(estimate: dict) -> str:
    if estimate.get("ci_low") is None:
        return f"{estimate['value']:.3f}"
    return f"{estimate['value']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"


def comparison_row(evaluation: dict, config) -> dict:
    metrics = evaluation["validation"]["metrics"]
    training = evaluation.get("training", {})
    return {
        "backbone": evaluation["backbone"],
        "image_size": config.image_size,
        "epochs_run": training.get("epochs_run"),
        "train_minutes": round(training.get("train_seconds", 0.0) / 60.0, 1),
        "parameters_m": round(training.get("parameters", 0) / 1e6, 2),
        "val_roc_auc": _fmt_ci(metrics["roc_auc"]),
        "val_pr_auc": round(metrics["pr_auc"]["value"], 3),
        "threshold": round(evaluation["validation"]["threshold"], 3),
        "val_sensitivity": _fmt_ci(metrics["sensitivity"]),
        "val_specificity": _fmt_ci(metrics["specificity"]),
        "val_ece": round(metrics["ece"]["value"], 3),
        "stress_min_auc": round(min(s["roc_auc"] for s in evaluation["stress"].values()), 3),
    }


def markdown_table(rows: list[dict]) -> str:
    header = "| " + " | ".join(title for _, title in COMPARISON_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COMPARISON_COLUMNS) + "|"
    body = ["| " + " | ".join(str(row[key]) for key, _ in COMPARISON_COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def write_comparison(run_dir: Path, evaluations: dict[str, dict], config, data_summary: dict) -> dict:
    """Rank by validation ROC-AUC (never test) and write comparison.{md,csv,json}."""
    ranked = sorted(evaluations.values(), key=lambda e: e["validation"]["metrics"]["roc_auc"]["value"], reverse=True)
    rows = [comparison_row(e, config) for e in ranked]
    best = ranked[0]["backbone"]
    budget = (
        f"equal wall-clock budget of {config.budget_minutes:g} min per backbone"
        if config.budget_minutes
        else f"up to {config.epochs} epochs per backbone (early stopping on validation ROC-AUC)"
    )
    counts = data_summary["counts"]
    notes = (
        f"Budget: {budget}, {config.image_size} px, batch {config.batch_size}, weights {config.weights}, seed {config.seed}, "
        f"same split and augmentation for every backbone. Validation: {data_summary['split_method']} "
        f"({counts['val']['NORMAL']} NORMAL / {counts['val']['PNEUMONIA']} PNEUMONIA). Threshold: operating point "
        f"'{config.default_operating_point}' chosen on validation. Stress min AUC: the lowest validation ROC-AUC over "
        f"contrast, gamma, blur, noise, crop and shift perturbations. Best by validation ROC-AUC: **{best}**."
    )
    (run_dir / COMPARISON_MD).write_text(markdown_table(rows) + "\n\n" + notes + "\n")
    with (run_dir / COMPARISON_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[key for key, _ in COMPARISON_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    comparison = {"best": best, "selection": "validation ROC-AUC", "budget": budget, "rows": rows}
    (run_dir / COMPARISON_JSON).write_text(json.dumps(comparison, indent=2))
    return comparison


def _history(model_dir: Path) -> dict[str, list[float]]:
    """history.csv by column: each metric's values over the epochs that logged it."""
    rows = read_history(model_dir)
    return {key: [row[key] for row in rows if key in row] for key in (rows[0] if rows else {})}


def plot_model(model_dir: Path, evaluation: dict, arrays: dict[str, np.ndarray]) -> None:
    """confusion.png, roc_pr.png, reliability.png and training_curves.png for one model (validation)."""
    y, p = arrays["val_y"], arrays["val_p"]
    name = evaluation["backbone"]
    threshold = evaluation["validation"]["threshold"]

    fig, ax = plt.subplots(figsize=(4, 4))
    matrix = np.array(evaluation["validation"]["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="black", fontsize=12)
    ax.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: validation, threshold {threshold:.3f}")
    fig.tight_layout()
    fig.savefig(model_dir / "confusion.png", dpi=120)
    plt.close(fig)

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    fpr, tpr, _ = roc_curve(y, p)
    roc_ax.plot(fpr, tpr, label=f"validation AUC {evaluation['validation']['metrics']['roc_auc']['value']:.3f}")
    precision, recall, _ = precision_recall_curve(y, p)
    pr_ax.plot(recall, precision, label=f"validation AP {evaluation['validation']['metrics']['pr_auc']['value']:.3f}")
    for point in evaluation["operating_points"]:
        roc_ax.scatter(1 - point["specificity"], point["sensitivity"], s=18, label=point["name"])
    roc_ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{name}: ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"{name}: precision-recall")
    roc_ax.legend(fontsize=7)
    pr_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(model_dir / "roc_pr.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for key, label in (
        ("val_p_uncalibrated", "uncalibrated"),
        ("val_p", f"calibrated ({evaluation['calibration']['method']})"),
    ):
        confidence, observed, _ = reliability_curve(y, arrays[key], bins=10)
        ax.plot(confidence, observed, marker="o", label=label)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(
        xlabel="predicted P(pneumonia)", ylabel="observed fraction pneumonia", title=f"{name}: reliability (validation)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(model_dir / "reliability.png", dpi=120)
    plt.close(fig)

    history = _history(model_dir)
    if history.get("auc"):
        fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
        epochs = np.arange(1, len(history["auc"]) + 1)
        for key, ax in (("loss", loss_ax), ("auc", auc_ax)):
            ax.plot(epochs, history[key], marker="o", label="train")
            if history.get(f"val_{key}"):
                ax.plot(epochs[: len(history[f"val_{key}"])], history[f"val_{key}"], marker="o", label="validation")
            ax.set(xlabel="epoch", ylabel=key, title=f"{name}: {key}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(model_dir / "training_curves.png", dpi=120)
        plt.close(fig)


def cam_grid(images, y, p, threshold: float, explain, out_path: Path, title: str, per_group: int = 4) -> Path:
    """Saliency overlays of validation true/false positives/negatives at `threshold`, the most confident of
    each kind. `explain(images, signs) -> (N, H, W)` maps in [0, 1]; each map explains the PREDICTED class
    (sign +1: PNEUMONIA, the logit's gradient; -1: NORMAL, the negative logit's)."""
    from pneumonia.explain import overlay

    predicted = positive_mask(p, threshold)
    groups = {
        "true positive": np.flatnonzero((y == 1) & predicted),
        "false positive": np.flatnonzero((y == 0) & predicted),
        "false negative": np.flatnonzero((y == 1) & ~predicted),
        "true negative": np.flatnonzero((y == 0) & ~predicted),
    }
    fig, axes = plt.subplots(len(groups), per_group, figsize=(2.2 * per_group, 2.4 * len(groups)))
    for row, (kind, index) in enumerate(groups.items()):
        chosen = index[np.argsort(-np.abs(p[index] - 0.5))][:per_group]
        signs = np.where(predicted[chosen], 1.0, -1.0).astype(np.float32)
        heatmaps = explain(images[chosen].astype(np.float32), signs) if len(chosen) else []
        for col in range(per_group):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(chosen):
                ax.imshow(overlay(images[chosen[col], :, :, 0].astype(np.uint8), heatmaps[col]))
                explained = "PNEUMONIA" if signs[col] > 0 else "NORMAL"
                ax.set_title(f"{kind}\np={p[chosen[col]]:.2f}, map: {explained}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def gradcam_grid(model_dir: Path, val, evaluation: dict, out_path: Path, per_group: int = 4) -> Path:
    """Grad-CAM (the backbone's last conv block) over validation, each map for the predicted class."""
    import keras

    from pneumonia.explain import GradCAM
    from training.backbones import BACKBONES, LOGIT_LAYER

    model = keras.models.load_model(model_dir / BEST_CHECKPOINT, compile=False)
    cam = GradCAM(model, BACKBONES[evaluation["backbone"]].gradcam_layer, LOGIT_LAYER)
    arrays = np.load(model_dir / PREDICTIONS_FILE)
    title = f"{evaluation['backbone']}: Grad-CAM on validation (research use only)"
    threshold = evaluation["validation"]["threshold"]
    return cam_grid(val.images, arrays["val_y"], arrays["val_p"], threshold, cam, out_path, title, per_group)
