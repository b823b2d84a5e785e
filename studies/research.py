"""The seed notebook's research questions, answered from this project's own evidence (validation only).

    python -m studies.research --bundle models/default --data ../shared/data/chest_xray --out results/research

1. Threshold tuning: the seed's fixed 0.69 beside the bundle's validation-chosen operating points, on the
   validation split and under each stress perturbation (training.stress), with 95% bootstrap intervals.
   Probabilities come from the bundle's ONNX graph, the path the service uses.
2. Epochs against generalization: the per-epoch validation curves that training recorded (history.csv).
3. Which CNN under which budget: the published backbone comparison, restated with its budget.

Reads the validation rows of a recorded split only; the test split is never read. Writes research.json,
research.md and plots into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pneumonia.bundle import ONNX_FILENAME, BundleMetadata, read_metadata
from pneumonia.labels import positive_mask
from training import layout
from training.data import DatasetError, decode_samples, read_split
from training.metrics import calibrate
from training.stress import perturbed_predictions

log = logging.getLogger("studies.research")

SEED_THRESHOLD = 0.69  # the seed notebook's tuned threshold on its own model's sigmoid output
BOOTSTRAP_SAMPLES = 2000
BATCH = 64
CLEAN = "clean"


# --- 1. threshold tuning ---------------------------------------------------------------------------------


def bundle_predictor(bundle_dir: Path, metadata: BundleMetadata):
    """P(pneumonia) from the bundle's ONNX graph (the service's classifier), in batches."""
    from pneumonia.inference import OnnxClassifier

    classifier = OnnxClassifier(bundle_dir / ONNX_FILENAME, metadata)

    def predict(images: np.ndarray) -> np.ndarray:
        return np.concatenate([classifier.predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])

    return predict


def uncalibrated(p: np.ndarray, metadata: BundleMetadata) -> np.ndarray:
    """Undo the bundle's Platt calibration: the model's own sigmoid output, as the seed thresholded it."""
    c = metadata.calibration
    return calibrate(p, 1.0 / c.scale, -c.bias / c.scale) if c.method == "platt" else np.asarray(p, dtype=float)


def candidate_thresholds(metadata: BundleMetadata) -> dict[str, float]:
    thresholds = {f"seed_{SEED_THRESHOLD:g}": SEED_THRESHOLD}
    thresholds.update({point.name: point.threshold for point in metadata.operating_points})
    return thresholds


def _interval(draws: np.ndarray) -> list[float]:
    return [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)]


def threshold_table(
    y: np.ndarray, p: np.ndarray, thresholds: dict[str, float], *, reference: str, samples: int, seed: int
) -> dict[str, dict]:
    """Sensitivity, specificity and Youden's J per threshold, with 95% intervals from a stratified bootstrap.

    The same resamples serve every threshold, so `j_minus_reference` is a paired difference against the
    `reference` threshold. Sensitivity depends only on the resampled positives and specificity only on the
    negatives, which lets the bootstrap run vectorised.
    """
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    positives, negatives = p[y == 1], p[y == 0]
    pos_draws = positives[rng.integers(0, len(positives), (samples, len(positives)))]
    neg_draws = negatives[rng.integers(0, len(negatives), (samples, len(negatives)))]

    def rates(t: float) -> tuple[float, float, np.ndarray, np.ndarray]:
        return (
            float(positive_mask(positives, t).mean()),
            float((~positive_mask(negatives, t)).mean()),
            positive_mask(pos_draws, t).mean(1),
            (~positive_mask(neg_draws, t)).mean(1),
        )

    ref_sens, ref_spec, ref_sens_b, ref_spec_b = rates(thresholds[reference])
    table = {}
    for name, t in thresholds.items():
        sens, spec, sens_b, spec_b = rates(t)
        table[name] = {
            "threshold": round(float(t), 4),
            "sensitivity": round(sens, 4),
            "sensitivity_ci": _interval(sens_b),
            "specificity": round(spec, 4),
            "specificity_ci": _interval(spec_b),
            "youden_j": round(sens + spec - 1, 4),
            "j_minus_reference": round((sens + spec) - (ref_sens + ref_spec), 4),
            "j_minus_reference_ci": _interval((sens_b + spec_b) - (ref_sens_b + ref_spec_b)),
        }
    return table


def threshold_study(bundle_dir: Path, data_dir: Path, split_csv: Path, *, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    from sklearn.metrics import roc_auc_score

    metadata = read_metadata(bundle_dir)
    val = read_split(split_csv, data_dir)["val"]  # validation rows only: the test split is never read
    if not val or not val[0].path.is_file():
        raise DatasetError(f"validation images of {split_csv} not found under {data_dir}")
    decoded = decode_samples(val, metadata.input_size, desc="validation")
    predict = bundle_predictor(bundle_dir, metadata)
    conditions = {CLEAN: predict(decoded.images), **perturbed_predictions(decoded.images, predict)}
    thresholds = candidate_thresholds(metadata)
    reference = f"seed_{SEED_THRESHOLD:g}"
    y = decoded.labels
    per_condition = {}
    for name, p in conditions.items():
        per_condition[name] = {
            "roc_auc": round(float(roc_auc_score(y, p)), 4),
            "served_probability": threshold_table(y, p, thresholds, reference=reference, samples=samples, seed=0),
            # the seed thresholded an uncalibrated sigmoid: 0.69 on this model's own output, for fairness
            "seed_threshold_on_uncalibrated_output": threshold_table(
                y, uncalibrated(p, metadata), {reference: SEED_THRESHOLD}, reference=reference, samples=samples, seed=0
            )[reference],
        }
    return {
        "bundle": {"name": metadata.name, "version": metadata.version, "backbone": metadata.backbone},
        "split_csv": str(split_csv),
        "n_validation": len(y),
        "n_positive": int(y.sum()),
        "skipped": len(decoded.skipped),
        "bootstrap_samples": samples,
        "thresholds": thresholds,
        "reference": reference,
        "conditions": per_condition,
        "matches_bundle_metadata": _matches_metadata(metadata, per_condition),
    }


def _matches_metadata(metadata: BundleMetadata, per_condition: dict) -> dict:
    """Do the ONNX probabilities reproduce what export recorded (from Keras) at the default point?"""
    default = metadata.default_operating_point
    clean = per_condition[CLEAN]["served_probability"][default]
    recorded = metadata.validation.metrics
    return {
        "validation_sensitivity": [clean["sensitivity"], round(recorded["sensitivity"].value, 4)],
        "validation_specificity": [clean["specificity"], round(recorded["specificity"].value, 4)],
        "stress_specificity": {
            name: [per_condition[name]["served_probability"][default]["specificity"], s.get("specificity")]
            for name, s in metadata.stress.items()
            if name in per_condition
        },
    }


# --- 2. epochs against generalization ------------------------------------------------------------------


def plateau(history: list[dict], tolerance: float) -> dict:
    """Best validation-AUC epoch, and the first epoch from which every later one stays within `tolerance` of
    the best (1-based): where validation stops resolving any improvement. None when the last epoch itself has
    fallen out of tolerance: the run never settled: its last epoch scores worse than its best by more than the tolerance."""
    aucs = [row["val_auc"] for row in history]
    best = int(np.argmax(aucs))
    settled = next((i + 1 for i in range(len(aucs)) if min(aucs[i:]) >= aucs[best] - tolerance), None)
    return {
        "epochs": len(aucs),
        "best_epoch": best + 1,
        "best_val_auc": round(aucs[best], 4),
        "within_tolerance_from_epoch": settled,
        "tolerance": round(tolerance, 4),
        "minutes_to_best": round(history[best].get("elapsed_s", float("nan")) / 60, 1),
    }


def epoch_study(results_dir: Path) -> dict:
    """Every published run's per-epoch curves; the plateau tolerance is half the width of the run's final
    validation ROC-AUC 95% interval, so 'stopped improving' means 'within the noise of that estimate'."""
    runs = {}
    for run_dir in sorted(d for d in results_dir.iterdir() if (d / layout.CONFIG_FILE).is_file()):
        config = layout.read_config(run_dir)
        for name, model_dir in layout.model_dirs(run_dir).items():
            history = layout.read_history(model_dir)
            if not history:
                continue
            evaluation = layout.read_evaluation(model_dir)
            auc = evaluation["validation"]["metrics"]["roc_auc"]
            runs[f"{run_dir.name}/{name}"] = {
                "image_size": config.image_size,
                "budget_minutes": config.budget_minutes,
                "history": [
                    {
                        k: round(row[k], 4)
                        for k in ("epoch", "auc", "val_auc", "val_loss", "val_accuracy", "learning_rate", "elapsed_s")
                        if k in row
                    }
                    for row in history
                ],
                "plateau": plateau(history, (auc["ci_high"] - auc["ci_low"]) / 2),
                "final_val_auc_ci": [round(auc["ci_low"], 4), round(auc["ci_high"], 4)],
                "final_stress_min_auc": round(min(s["roc_auc"] for s in evaluation["stress"].values()), 4),
            }
    return runs


# --- 3. which CNN, under which budget ------------------------------------------------------------------


def budget_comparison(run_dir: Path) -> dict:
    comparison = layout.read_comparison(run_dir)
    config = layout.read_config(run_dir)
    return {
        "run": run_dir.name,
        "budget": comparison["budget"],
        "image_size": config.image_size,
        "weights": config.weights,
        "rows": comparison["rows"],
        "best": comparison["best"],
    }


# --- output --------------------------------------------------------------------------------------------


def _fmt(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def worst_case(study: dict) -> dict[str, dict]:
    """Per threshold: the lowest sensitivity and specificity over the perturbations, and where."""
    stressed = {c: r["served_probability"] for c, r in study["conditions"].items() if c != CLEAN}
    summary = {}
    for name in study["thresholds"]:
        clean = study["conditions"][CLEAN]["served_probability"][name]
        summary[name] = {"threshold": clean["threshold"], CLEAN: {k: clean[k] for k in ("sensitivity", "specificity")}}
        for metric in ("sensitivity", "specificity"):
            where = min(stressed, key=lambda c: stressed[c][name][metric])
            row = stressed[where][name]
            summary[name][f"min_stress_{metric}"] = {
                "value": row[metric],
                "ci": row[f"{metric}_ci"],
                "perturbation": where,
            }
    return summary


def threshold_markdown(study: dict) -> list[str]:
    names = list(study["thresholds"])
    match = study["matches_bundle_metadata"]
    intro = (
        f"Bundle {study['bundle']['name']} {study['bundle']['version']}; {study['n_validation']} validation images "
        f"({study['n_positive']} PNEUMONIA); {study['bootstrap_samples']} stratified bootstrap resamples. "
        f"youden, max_f1, sensitivity_95 and balanced_0.5 were chosen on this clean validation set and stress_youden "
        f"on it and its perturbations, so their rows here are in-sample; the seed's {SEED_THRESHOLD:g} was fixed "
        f"beforehand (on another model). ONNX reproduces the bundle's recorded validation sensitivity/specificity at "
        f"its default point: {match['validation_sensitivity'][0]}/{match['validation_specificity'][0]} here, "
        f"{match['validation_sensitivity'][1]}/{match['validation_specificity'][1]} recorded from Keras at export "
        f"(a threshold that sits on one image's probability moves that image by the ONNX/Keras difference)."
    )
    lines = [
        intro,
        "",
        "Worst case over the eight perturbations:",
        "",
        "| Threshold | Value | Clean sensitivity | Clean specificity | Lowest stress sensitivity [95% CI] | Lowest stress specificity [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in worst_case(study).items():
        sens, spec = row["min_stress_sensitivity"], row["min_stress_specificity"]
        lines.append(
            f"| {name} | {row['threshold']:.3f} | {row[CLEAN]['sensitivity']:.3f} | {row[CLEAN]['specificity']:.3f} | "
            f"{_fmt(sens['value'], sens['ci'])} ({sens['perturbation']}) | {_fmt(spec['value'], spec['ci'])} ({spec['perturbation']}) |"
        )
    lines += [
        "",
        f"Every condition. Delta J: Youden's J minus that of the seed's {SEED_THRESHOLD:g} on the same resamples (paired).",
        "",
        "| Condition | AUC | Threshold | Value | Sensitivity [95% CI] | Specificity [95% CI] | Delta J vs 0.69 [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition, result in study["conditions"].items():
        for name in names:
            row = result["served_probability"][name]
            delta = (
                "reference"
                if name == study["reference"]
                else _fmt(row["j_minus_reference"], row["j_minus_reference_ci"])
            )
            lines.append(
                f"| {condition} | {result['roc_auc']:.3f} | {name} | {row['threshold']:.3f} | "
                f"{_fmt(row['sensitivity'], row['sensitivity_ci'])} | {_fmt(row['specificity'], row['specificity_ci'])} | {delta} |"
            )
        seed_raw = result["seed_threshold_on_uncalibrated_output"]
        lines.append(
            f"| {condition} | | 0.69 on uncalibrated output | 0.690 | {_fmt(seed_raw['sensitivity'], seed_raw['sensitivity_ci'])} | "
            f"{_fmt(seed_raw['specificity'], seed_raw['specificity_ci'])} | |"
        )
    return lines


def epoch_markdown(runs: dict) -> list[str]:
    lines = [
        "| Run / model | px | Epochs | Best epoch (val AUC) | Within tolerance of the best from epoch | Tolerance | Final val AUC 95% CI | Final stress min AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        pl = run["plateau"]
        lines.append(
            f"| {name} | {run['image_size']} | {pl['epochs']} | {pl['best_epoch']} ({pl['best_val_auc']:.4f}) | "
            f"{pl['within_tolerance_from_epoch'] or 'never (the last epoch fell out)'} | {pl['tolerance']:.4f} | {run['final_val_auc_ci']} | {run['final_stress_min_auc']:.3f} |"
        )
    return lines


def comparison_markdown(comparison: dict) -> list[str]:
    lines = [
        f"Budget: {comparison['budget']}, {comparison['image_size']} px, weights {comparison['weights']}.",
        "",
        "| Backbone | Epochs run | Train min | Val ROC-AUC [95% CI] | Stress min AUC |",
        "|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        lines.append(
            f"| {row['backbone']} | {row['epochs_run']} | {row['train_minutes']} | {row['val_roc_auc']} | {row['stress_min_auc']} |"
        )
    return lines


def plot_thresholds(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(study["conditions"])
    names = list(study["thresholds"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=False)
    x = np.arange(len(conditions))
    width = 0.8 / len(names)
    for ax, metric in zip(axes, ("sensitivity", "specificity"), strict=True):
        for i, name in enumerate(names):
            rows = [study["conditions"][c]["served_probability"][name] for c in conditions]
            values = np.array([r[metric] for r in rows])
            low = values - np.array([r[f"{metric}_ci"][0] for r in rows])
            high = np.array([r[f"{metric}_ci"][1] for r in rows]) - values
            ax.errorbar(
                x + (i - len(names) / 2 + 0.5) * width,
                values,
                yerr=[low, high],
                fmt="o",
                ms=3,
                capsize=2,
                label=f"{name} ({study['thresholds'][name]:.2f})",
            )
        ax.set_xticks(x, conditions, rotation=35, ha="right")
        ax.set_title(f"Validation {metric} (95% bootstrap CI)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_epochs(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, run in runs.items():
        epochs = [row["epoch"] + 1 for row in run["history"]]
        axes[0].plot(epochs, [row["val_auc"] for row in run["history"]], marker="o", ms=3, label=name)
        axes[1].plot(epochs, [row["val_loss"] for row in run["history"]], marker="o", ms=3, label=name)
    axes[0].set(title="Validation ROC-AUC per epoch (Keras, uncalibrated)", xlabel="epoch", ylim=(0.84, 1.0))
    axes[1].set(title="Validation loss per epoch (unweighted cross-entropy)", xlabel="epoch", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EPOCH_NOTE = (
    "Tolerance: half the width of the run's final validation ROC-AUC 95% interval. A stress-check AUC per epoch "
    "was not recorded (no per-epoch checkpoints were kept); only the final model's stress AUC is known."
)


def write_outputs(out: Path, thresholds: dict, epochs: dict, comparison: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "research.json").write_text(
        json.dumps(
            {
                "thresholds": {**thresholds, "worst_case": worst_case(thresholds)},
                "epochs": epochs,
                "comparison": comparison,
            },
            indent=2,
        )
    )
    plot_thresholds(thresholds, out / "thresholds.png")
    plot_epochs(epochs, out / "epochs.png")
    sections = [
        "# Research questions of the seed notebook (validation and stress check only)",
        "",
        'Written by `python -m studies.research`; docs/research.md, "What the seed asked, answered", interprets it.',
        "",
        "## Threshold tuning",
        "",
        *threshold_markdown(thresholds),
        "",
        "![thresholds](thresholds.png)",
        "",
        "## Epochs against validation",
        "",
        EPOCH_NOTE,
        "",
        *epoch_markdown(epochs),
        "",
        "![epochs](epochs.png)",
        "",
        "## Backbones under a wall-clock budget",
        "",
        *comparison_markdown(comparison),
        "",
    ]
    (out / "research.md").write_text("\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.research", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default="models/default", help="model bundle to study")
    parser.add_argument("--data", required=True, help="dataset root the split's relative paths resolve against")
    parser.add_argument(
        "--split",
        default="results/final192/split.csv",
        help="recorded split of the bundle's run (its val rows are used)",
    )
    parser.add_argument("--results", default="results", help="published runs, for their per-epoch history.csv")
    parser.add_argument("--comparison", default="results/comparison", help="published equal-budget backbone comparison")
    parser.add_argument("--out", default="results/research")
    parser.add_argument("--bootstrap-samples", type=int, default=BOOTSTRAP_SAMPLES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        thresholds = threshold_study(
            Path(args.bundle), Path(args.data), Path(args.split), samples=args.bootstrap_samples
        )
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_outputs(Path(args.out), thresholds, epoch_study(Path(args.results)), budget_comparison(Path(args.comparison)))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
