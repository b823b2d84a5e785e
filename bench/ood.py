"""`python -m bench.ood`: how well the input check separates chest X-rays from everything else.

Runs the service's own in-process path (`ModelService.assess`, policy `warn` so every image gets its full
verdict) over the corpus of bench/ood_corpus.py: clean validation X-rays (the patient split recorded in
`--split`), their rotated, inverted, cropped and colourised versions, pictures shipped in packages and generated
documents, charts, noise, gradients and blocks. Writes results/ood/ood.json and results/ood/README.md.

    python -m bench.ood --bundle models/default --data ../shared/data/chest_xray \\
        --split results/final192/split.csv --out results/ood
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.ood_corpus import CorpusItem, generated, packaged, transformed_xrays
from pneumonia.imaging import decode_image, to_model_input
from pneumonia.model import Model

NON_XRAY = ("photo", "dicom_not_chest", "document", "chart", "noise", "gradient", "blocks")
ROTATED = ("rotated_90", "rotated_180", "rotated_270")


def validation_xrays(data: Path, split: Path, count: int, seed: int) -> np.ndarray:
    """(N, H, W) uint8: a seeded sample of the recorded validation split, as decoded by the service."""
    from training.data import read_split

    samples = read_split(split, data)["val"]
    chosen = np.random.default_rng(seed).choice(len(samples), min(count, len(samples)), replace=False)
    return np.stack([decode_image(samples[i].path.read_bytes()).pixels for i in sorted(chosen)])


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of an out-of-distribution image > score of a clean X-ray), ties counted half."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def run(bundle: Path, items: list[CorpusItem]) -> dict:
    model = Model.load(bundle, explain=False, onnx_threads=1)
    rows = []
    for item in items:
        image = decode_image(item.data)
        started = time.perf_counter()
        assessed = model.assess(image, "warn")
        probability, check = assessed.probability, assessed.check
        rows.append(
            {"kind": item.kind, "name": item.name, "accepted": check.accepted, "score": check.ood_score,
             "rotated_back": check.rotated_back_degrees, "probability": probability, "reasons": check.reasons,
             "seconds": time.perf_counter() - started}
        )  # fmt: skip
    return {"rows": rows, "threshold": model.checker.threshold}


def summarise(rows: list[dict], threshold: float | None) -> dict:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    kinds = {}
    for kind, group in sorted(by_kind.items()):
        refused = float(np.mean([not r["accepted"] for r in group]))
        entry = {"n": len(group), "refused": refused, "accepted": 1 - refused}
        if kind.startswith("rotated_"):
            # the corpus turns counter-clockwise by the kind's angle; undoing it is the complementary turn
            undo = (360 - int(kind.split("_")[1])) % 360
            turned_back = [r["accepted"] and r["rotated_back"] == undo for r in group]
            entry["refused_or_rotated_back"] = float(
                np.mean([not r["accepted"] or t for r, t in zip(group, turned_back, strict=True)])
            )
            entry["rotated_back_correctly"] = float(np.mean(turned_back))
        kinds[kind] = entry
    clean = np.array([r["score"] for r in by_kind["clean_xray"]], dtype=float)
    non_xray_rows = [r for k in NON_XRAY for r in by_kind.get(k, [])]
    # Images refused before the detector ran (cheap checks) have no score: count them as caught, score +inf.
    others = np.array([np.inf if r["score"] is None else r["score"] for r in non_xray_rows], dtype=float)
    fpr95 = float(np.mean(clean > np.quantile(others, 0.05))) if len(others) else None
    return {
        "threshold": threshold,
        "clean_acceptance": kinds["clean_xray"]["accepted"],
        "non_xray_refused": float(np.mean([not r["accepted"] for r in non_xray_rows])),
        "rotated_refused_or_rotated_back": float(np.mean([kinds[k]["refused_or_rotated_back"] for k in ROTATED])),
        "inverted_refused": kinds["inverted"]["refused"],
        "detector_auroc_clean_vs_non_xray": _auroc(clean, others),
        "detector_fpr_at_95_tpr": fpr95,
        "kinds": kinds,
    }


def latency(bundle: Path, data: Path, split: Path, repeats: int = 200) -> dict:
    """p50 of the ONNX run alone vs the whole check + ONNX run, on one validation X-ray (ms)."""
    from training.data import read_split

    model = Model.load(bundle, explain=False, onnx_threads=1)
    path = read_split(split, data)["val"][0].path
    image = decode_image(path.read_bytes())
    timings: dict[str, list[float]] = {"resize_and_onnx": [], "check_and_onnx": []}
    for _ in range(repeats):
        started = time.perf_counter()  # the request path before the check: resize, then the probability alone
        batch = to_model_input(image, model.metadata.input_size)[None]
        model.classifier.session.run([model.classifier.output_name], {model.classifier.input_name: batch})
        timings["resize_and_onnx"].append(time.perf_counter() - started)
        started = time.perf_counter()
        model.assess(image, "refuse")
        timings["check_and_onnx"].append(time.perf_counter() - started)
    return {k: round(1000 * float(np.median(v)), 3) for k, v in timings.items()}


def markdown(summary: dict, timing: dict) -> str:
    lines = [
        "# Input check benchmark (`python -m bench.ood`)",
        "",
        "Generated; do not edit. Corpus: bench/ood_corpus.py (validation X-rays of the recorded patient split and",
        "their transforms; pictures shipped in scikit-image, scikit-learn and pydicom; generated documents, charts,",
        "noise, gradients, blocks). Policy `warn`, so every image gets its full verdict.",
        "",
        f"- clean validation X-rays accepted: **{summary['clean_acceptance']:.1%}** (target >= 99%)",
        f"- non-X-ray images refused: **{summary['non_xray_refused']:.1%}** (target >= 98%)",
        f"- rotated X-rays refused or correctly rotated back: **{summary['rotated_refused_or_rotated_back']:.1%}** (target >= 95%)",
        f"- inverted X-rays refused: **{summary['inverted_refused']:.1%}** (target >= 90%)",
        f"- detector alone, clean X-rays vs non-X-rays: AUROC {summary['detector_auroc_clean_vs_non_xray']:.4f}, "
        f"FPR at 95% TPR {summary['detector_fpr_at_95_tpr']:.3f}",
        f"- p50 latency, one 224 px validation X-ray: resize + ONNX probability alone {timing['resize_and_onnx']:.2f} ms, "
        f"resize + input check + one ONNX run with the statistics {timing['check_and_onnx']:.2f} ms",
        "",
        "| kind | n | refused | accepted | rotated back correctly |",
        "|---|---|---|---|---|",
    ]
    for kind, entry in summary["kinds"].items():
        back = f"{entry['rotated_back_correctly']:.1%}" if "rotated_back_correctly" in entry else ""
        lines.append(f"| {kind} | {entry['n']} | {entry['refused']:.1%} | {entry['accepted']:.1%} | {back} |")
    lines += [
        "",
        "What it cannot catch: it was fitted on pediatric frontal films of one hospital, so it says nothing about",
        "adult films, and lateral films or other radiographs (hand, knee) are caught only as far as their texture",
        "statistics differ; none were in this corpus. A cropped X-ray that still shows most of the chest passes.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ood", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True, help="dataset root of the split")
    parser.add_argument("--split", type=Path, required=True, help="split.csv with the validation rows")
    parser.add_argument("--out", type=Path, default=Path("results/ood"))
    parser.add_argument("--xrays", type=int, default=200, help="validation X-rays (each also transformed)")
    parser.add_argument("--generated", type=int, default=40, help="generated images per kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    xrays = validation_xrays(args.data, args.split, args.xrays, args.seed)
    items = [*transformed_xrays(xrays, args.seed), *packaged(args.seed), *generated(args.generated, args.seed)]
    result = run(args.bundle, items)
    summary = summarise(result["rows"], result["threshold"])
    timing = latency(args.bundle, args.data, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ood.json").write_text(
        json.dumps({"summary": summary, "latency_ms": timing, "rows": result["rows"]}, indent=1)
    )
    (args.out / "README.md").write_text(markdown(summary, timing))
    print(markdown(summary, timing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
