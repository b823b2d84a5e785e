"""The seed's ablation questions (issue 23), answered from the published runs, validation only.

    python -m studies.ablations --results results --out results/ablations

Each question compares arms that differ in one thing (training/configs/ablation_*.toml); every arm is a run
that `scripts/ablations` trained and `python -m training publish` copied into results/. The yardstick is the
seed spread: the shipped recipe trained with seeds 42, 43 and 44 on the same patient split. A difference
between arms smaller than that spread is not evidence of an effect. An arm not yet published is listed as
missing, never guessed. Writes ablations.md, ablations.json and the per-epoch plots into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import layout

SHIPPED_RUN = "final192"


@dataclass(frozen=True)
class Arm:
    label: str
    run: str  # results/<run>, with models/<backbone>/ inside
    backbone: str = "mobilenetv2"


@dataclass(frozen=True)
class Question:
    key: str
    title: str
    claim: str  # what the seed notebook says ("" for the yardstick itself)
    arms: tuple[Arm, ...]
    note: str = ""


SEEDS = Question(
    "seeds",
    "Seed spread: the shipped recipe, three seeds, one split",
    "",
    (
        Arm("seed 42 (shipped)", SHIPPED_RUN),
        Arm("seed 43", "ablation_seed43"),
        Arm("seed 44", "ablation_seed44"),
    ),
    "Initialisation and augmentation seeds vary; the patient split is held at seed 42.",
)
QUESTIONS = (
    Question(
        "backbones",
        "Backbones at equal training (128 px, up to 14 epochs, patience 5)",
        "DenseNet121 works best of the four backbones.",
        tuple(
            Arm(backbone, f"ablation_equal_epochs/{backbone}", backbone)
            for backbone in ("densenet121", "resnet50", "efficientnetb0", "mobilenetv2")
        ),
        "One seed per backbone, at 128 px where the shipped model runs at 192 px: read against the seed spread.",
    ),
    Question(
        "imbalance",
        "Class imbalance: loss weights, nothing, or resampling",
        "Class imbalance affects the early results.",
        (
            Arm("balanced weights (shipped)", SHIPPED_RUN),
            Arm("none", "ablation_imbalance_none"),
            Arm("resample", "ablation_imbalance_resample"),
        ),
        "ECE raw is the model's own output before Platt scaling; ECE is after it.",
    ),
    Question(
        "augmentation",
        "Augmentation strength",
        "Augmentation reduces overfitting.",
        (
            Arm("none (0)", "ablation_no_aug"),
            Arm("light (0.5)", "candidates/light_aug"),
            Arm("shipped (1.25)", SHIPPED_RUN),
        ),
        "Train-val gap: training ROC-AUC (on augmented batches) minus validation ROC-AUC at the best epoch.",
    ),
    Question(
        "epochs",
        "Epochs against generalization under stress (shipped recipe, stress AUC every epoch)",
        "Longer training generalizes better.",
        (Arm("shipped recipe, stress logged", "ablation_epochs_stress"),),
        "The per-epoch curves are in the plots below.",
    ),
)


# --- reading a published arm -------------------------------------------------------------------------------
def _estimate(metric: dict[str, float]) -> str:
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


def read_arm(results: Path, arm: Arm) -> dict[str, Any] | None:
    """The arm's validation evidence, or None when it has not been published."""
    model_dir = layout.model_dir(results / arm.run, arm.backbone)
    if not (model_dir / layout.EVALUATION_FILE).is_file():
        return None
    evaluation = layout.read_evaluation(model_dir)
    metrics = evaluation["validation"]["metrics"]
    training = evaluation["training"]
    stress = {name: s["roc_auc"] for name, s in evaluation["stress"].items()}
    worst = min(stress, key=lambda name: stress[name])
    history = layout.read_history(model_dir)
    best = max(history, key=lambda row: row.get("val_auc", 0.0)) if history else None
    gap = round(best["auc"] - best["val_auc"], 4) if best and "auc" in best else None
    return {
        "label": arm.label,
        "run": arm.run,
        "backbone": arm.backbone,
        "epochs_run": training["epochs_run"],
        "best_epoch": training.get("best_epoch"),
        "train_minutes": round(training["train_seconds"] / 60, 1),
        "roc_auc": metrics["roc_auc"]["value"],
        "roc_auc_text": _estimate(metrics["roc_auc"]),
        "sensitivity_text": _estimate(metrics["sensitivity"]),
        "specificity_text": _estimate(metrics["specificity"]),
        "ece": round(metrics["ece"]["value"], 3),
        "ece_raw": round(evaluation["ece_uncalibrated"], 3),
        "stress_min_auc": round(stress[worst], 4),
        "stress_worst": worst,
        "train_val_gap": gap,
        "history": history,
    }


# --- the yardstick and the verdicts --------------------------------------------------------------------------
def seed_spread(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """max - min over the published seed arms of validation ROC-AUC and stress-min AUC (None below two)."""
    if len(rows) < 2:
        return None
    aucs = [row["roc_auc"] for row in rows]
    stress = [row["stress_min_auc"] for row in rows]
    return {
        "n_seeds": len(rows),
        "roc_auc": round(max(aucs) - min(aucs), 4),
        "stress_min_auc": round(max(stress) - min(stress), 4),
    }


def verdict(rows: list[dict[str, Any]], spread: dict[str, Any] | None) -> str:
    """Which arm leads on validation ROC-AUC and on the stress minimum, and whether by more than the spread;
    with three arms or more, also how far the last one trails the leader (a lead over the runner-up alone would
    hide an arm that falls behind both others)."""
    if len(rows) < 2:
        return "Fewer than two arms published: no comparison yet."

    def judged(difference: float, key: str) -> str:
        if spread is None:
            return "no seed spread published yet to judge it against"
        if round(difference, 4) > spread[key]:  # as shown: 0.997 - 0.996 is 0.0010000000000001 in floats
            return f"beyond the seed spread ({spread[key]:.4f})"
        return f"within the seed spread ({spread[key]:.4f}): no evidence of a difference"

    parts = []
    for key, name in (("roc_auc", "validation ROC-AUC"), ("stress_min_auc", "stress-minimum AUC")):
        ranked = sorted(rows, key=lambda row: row[key], reverse=True)
        first, second, last = ranked[0], ranked[1], ranked[-1]
        lead = first[key] - second[key]
        if round(lead, 4) > 0:
            parts.append(f"{first['label']} leads on {name} by {lead:.4f}, {judged(lead, key)}")
        else:
            parts.append(f"{first['label']} and {second['label']} tie on {name}")
        if len(ranked) > 2:
            trail = first[key] - last[key]
            parts.append(f"{last['label']} trails {first['label']} on {name} by {trail:.4f}, {judged(trail, key)}")
    return "; ".join(parts) + "."


def epoch_reading(row: dict[str, Any], spread: dict[str, Any] | None) -> str | None:
    """Where validation AUC and the stress minimum peak, and what the epochs after the stress peak cost."""
    logged = [h for h in row["history"] if "stress_min_auc" in h]
    if not logged:
        return None
    best_val = max(logged, key=lambda h: h["val_auc"])
    best_stress = max(logged, key=lambda h: h["stress_min_auc"])
    drop = best_stress["stress_min_auc"] - logged[-1]["stress_min_auc"]
    judged = (
        "no seed spread to judge it against"
        if spread is None
        else ("beyond" if drop > spread["stress_min_auc"] else "within") + " the seed spread"
    )
    return (
        f"{row['label']}: validation ROC-AUC peaks at epoch {int(best_val['epoch']) + 1}, the stress minimum at "
        f"epoch {int(best_stress['epoch']) + 1}; the last epoch ({int(logged[-1]['epoch']) + 1}) is {drop:.4f} "
        f"below that stress peak ({judged})."
    )


FEW_SEEDS = 3  # below this many seeds, the spread is a floor on run-to-run variation, not an estimate of it


def caveat(reading: str, spread: dict[str, Any] | None) -> str:
    """A reading that calls a lead "beyond" a spread measured on too few seeds says that it is only suggestive."""
    if spread is None or spread["n_seeds"] >= FEW_SEEDS or "beyond" not in reading:
        return reading
    return (
        f"{reading} With {spread['n_seeds']} seeds the spread is a floor on how far identical runs land apart, "
        "so 'beyond' here is suggestive, not established."
    )


EARLY_EPOCHS = 3  # "the early results" of the seed's imbalance claim: the first epochs' validation AUC


def spread_of(values: list[float]) -> float | None:
    return round(max(values) - min(values), 4) if len(values) >= 2 else None


def early_reading(rows: list[dict[str, Any]], seed_rows: list[dict[str, Any]]) -> str | None:
    """Validation ROC-AUC of each arm over the first epochs, against the seeds' spread at the same epoch."""
    parts = []
    for epoch in range(EARLY_EPOCHS):
        arms = [row["history"][epoch]["val_auc"] for row in rows if len(row["history"]) > epoch]
        seeds = [row["history"][epoch]["val_auc"] for row in seed_rows if len(row["history"]) > epoch]
        if len(arms) < 2:
            return None
        arm_range, seed_range = spread_of(arms), spread_of(seeds)
        if arm_range is None or seed_range is None:
            judged = "no seed spread yet"
        else:
            judged = f"{'beyond' if arm_range > seed_range else 'within'} the seeds' spread {seed_range:.4f}"
        parts.append(f"epoch {epoch + 1}: the arms span {arm_range:.4f} ({judged})")
    return "Early validation ROC-AUC, " + "; ".join(parts) + "."


def gap_reading(rows: list[dict[str, Any]], seed_rows: list[dict[str, Any]]) -> str | None:
    """Each arm's train-val gap at its best epoch, against the gap's spread over the seeds."""
    gaps = {row["label"]: row["train_val_gap"] for row in rows if row["train_val_gap"] is not None}
    if len(gaps) < 2:
        return None
    seed_range = spread_of([row["train_val_gap"] for row in seed_rows if row["train_val_gap"] is not None])
    widest = max(gaps, key=lambda label: gaps[label])
    lead = gaps[widest] - sorted(gaps.values())[-2]
    judged = (
        "no seed spread yet to judge it against"
        if seed_range is None
        else ("beyond" if lead > seed_range else "within") + f" the seeds' gap spread ({seed_range:.4f})"
    )
    return f"The widest train-val gap is {widest}'s, {lead:.4f} above the next arm's ({judged})."


# --- rendering -------------------------------------------------------------------------------------------------
COLUMNS = (
    ("label", "Arm"),
    ("epochs_run", "Epochs"),
    ("best_epoch", "Best epoch"),
    ("train_minutes", "Train min"),
    ("roc_auc_text", "Val ROC-AUC [95% CI]"),
    ("sensitivity_text", "Val sensitivity"),
    ("specificity_text", "Val specificity"),
    ("ece_raw", "ECE raw"),
    ("ece", "ECE"),
    ("stress_min_auc", "Stress min AUC"),
    ("stress_worst", "Worst perturbation"),
    ("train_val_gap", "Train-val gap"),
)


def render_table(rows: list[dict[str, Any]], missing: list[Arm]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["" if row[key] is None else str(row[key]) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    for arm in missing:
        lines.append(f"| {arm.label} | not published yet (`results/{arm.run}`) |" + " |" * (len(COLUMNS) - 2))
    return lines


def plot_epochs(sections: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """Validation AUC and stress-minimum AUC per epoch, one line per arm that logged the stress every epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in ("backbones", "epochs"):
        rows = [row for row in sections[key]["rows"] if any("stress_min_auc" in h for h in row["history"])]
        if not rows:
            continue
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
        for row in rows:
            epochs = [int(h["epoch"]) + 1 for h in row["history"]]
            left.plot(epochs, [h["val_auc"] for h in row["history"]], marker="o", label=row["label"])
            right.plot(epochs, [h.get("stress_min_auc", float("nan")) for h in row["history"]], marker="o")
        left.set(title="Validation ROC-AUC", xlabel="epoch", ylabel="ROC-AUC")
        right.set(title="Stress-minimum ROC-AUC (validation, 8 perturbations)", xlabel="epoch")
        left.legend(fontsize=8)
        figure.tight_layout()
        name = f"ablation_{key}_per_epoch.png"  # docs/results_images.py ALIASES lists these names
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written


def build(results: Path) -> dict[str, Any]:
    seed_rows = [row for arm in SEEDS.arms if (row := read_arm(results, arm)) is not None]
    spread = seed_spread(seed_rows)
    sections: dict[str, dict[str, Any]] = {}
    for question in (SEEDS, *QUESTIONS):
        rows, missing = [], []
        for arm in question.arms:
            row = read_arm(results, arm)
            (rows.append(row) if row is not None else missing.append(arm))
        readings = [text for row in rows if (text := epoch_reading(row, spread)) is not None]
        if question.key == "imbalance":
            readings.append(early_reading(rows, seed_rows) or "")
        if question.key == "augmentation":
            readings.append(gap_reading(rows, seed_rows) or "")
        comparison = "" if question is SEEDS or len(question.arms) < 2 else verdict(rows, spread)
        sections[question.key] = {
            "title": question.title,
            "claim": question.claim,
            "note": question.note,
            "rows": rows,
            "missing": missing,
            "verdict": caveat(" ".join(filter(None, [comparison, *readings])), spread),
        }
    return {"seed_spread": spread, "sections": sections}


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    spread = report["seed_spread"]
    lines = []
    if spread:
        lines.append(
            f"Seed spread over {spread['n_seeds']} seeds (max - min): validation ROC-AUC {spread['roc_auc']:.4f}, "
            f"stress-minimum AUC {spread['stress_min_auc']:.4f}."
        )
    else:
        lines.append("Seed spread: fewer than two seed runs published, so no difference below can be judged yet.")
    lines += [
        "",
        "Train min is wall-clock time on a 2-core machine that was doing other work at the same time (and was "
        "paused for benchmarks): it is not a cost comparison; `results/comparison` is the cost view.",
    ]
    for section in report["sections"].values():
        lines += ["", f"### {section['title']}", ""]
        if section["claim"]:
            lines.append(f"Seed's claim: {section['claim']}")
            lines.append("")
        lines += render_table(section["rows"], section["missing"])
        if section["note"]:
            lines += ["", section["note"]]
        if section["verdict"]:
            lines += ["", f"**Reading:** {section['verdict']}"]
    for name in plots:
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.ablations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="published runs (default: results)")
    parser.add_argument("--out", type=Path, default=Path("results/ablations"), help="where to write the report")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: {args.results} is not a directory of published runs", file=sys.stderr)
        return 2
    report = build(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    plots = plot_epochs(report["sections"], args.out)
    (args.out / "ablations.md").write_text(render_markdown(report, plots))
    serialisable = {
        "seed_spread": report["seed_spread"],
        "sections": {
            key: {
                **{k: v for k, v in section.items() if k not in ("rows", "missing")},
                "rows": [{k: v for k, v in row.items() if k != "history"} for row in section["rows"]],
                "missing": [arm.run for arm in section["missing"]],
            }
            for key, section in report["sections"].items()
        },
    }
    (args.out / "ablations.json").write_text(json.dumps(serialisable, indent=2) + "\n")
    print(f"wrote {args.out / 'ablations.md'}, ablations.json and {len(plots)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
