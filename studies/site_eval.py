"""Does site adaptation help? Simulated new sites built from validation alone (`results/adaptation`).

Each stress perturbation of training/stress.py, and a few pairs of them, applied to the validation images is
one simulated site. Validation patients are split into two halves: AdaBN (training/adapt.py) sees the first
half's images (unlabeled, the first n of them), and the second half is scored before and after, at the bundle's
default operating point. The control is the clean validation split: adapting on it must change little.

    python -m studies.site_eval --bundle models/default --data ../shared/data/chest_xray \\
        --split results/final192/split.csv --out results/adaptation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pneumonia.labels import positive_mask
from training.adapt import adapt_batchnorm
from training.stress import PERTURBATIONS, perturb

SIZES = (25, 50, 100, 200, 0)  # 0: every image of the adaptation half
PAIRS = (("contrast_low", "noise"), ("gamma_dark", "blur"), ("contrast_low", "blur"), ("gamma_bright", "noise"))


def site_images(images: np.ndarray, site: str, seed: int) -> np.ndarray:
    if site == "clean":
        return images
    for index, name in enumerate(site.split("+")):
        images = perturb(images, PERTURBATIONS[name], seed=seed + index)
    return images


def halves(patients: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the adaptation and evaluation halves, split by patient."""
    unique = sorted(set(patients))
    chosen = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2].tolist())
    adapt = np.array([p in chosen for p in patients])
    return adapt, ~adapt


def scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    predicted = positive_mask(p, threshold)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "sensitivity": float(predicted[y == 1].mean()),
        "specificity": float(1 - predicted[y == 0].mean()),
        "accuracy": float((predicted == (y == 1)).mean()),
    }


def evaluate_sites(bundle: Path, data: Path, split: Path, seed: int = 0) -> dict:
    import keras

    from pneumonia.bundle import KERAS_FILENAME, read_metadata
    from training.data import decode_samples, read_split

    metadata = read_metadata(bundle)
    threshold = metadata.operating_point().threshold
    samples = read_split(split, data)["val"]
    decoded = decode_samples(samples, metadata.input_size, desc="validation")
    images, labels = decoded.images.astype(np.float32), decoded.labels
    patients = [s.patient for s in samples if s.path in set(decoded.paths)]
    adapt_mask, eval_mask = halves(patients, seed)
    model = keras.models.load_model(bundle / KERAS_FILENAME, compile=False)
    source_weights = model.get_weights()
    sites = ["clean", *PERTURBATIONS, *("+".join(pair) for pair in PAIRS)]
    results: dict = {"bundle": f"{metadata.name} {metadata.version}", "threshold": threshold,
                     "operating_point": metadata.default_operating_point, "n_eval": int(eval_mask.sum()),
                     "n_adapt_available": int(adapt_mask.sum()), "sites": {}}  # fmt: skip
    for site in sites:
        perturbed = site_images(images, site, seed)
        pool, held_out, y = perturbed[adapt_mask], perturbed[eval_mask], labels[eval_mask]
        model.set_weights(source_weights)
        entry = {"before": scores(y, model.predict(held_out, batch_size=64, verbose=0).reshape(-1), threshold)}
        for size in SIZES:
            count = len(pool) if size == 0 else min(size, len(pool))
            model.set_weights(source_weights)
            chosen = np.random.default_rng(seed + size).permutation(len(pool))[:count]
            adapt_batchnorm(model, pool[chosen])
            entry[f"after_{size or 'all'}"] = scores(
                y, model.predict(held_out, batch_size=64, verbose=0).reshape(-1), threshold
            )
        results["sites"][site] = entry
        print(site, json.dumps({k: {m: round(v, 3) for m, v in e.items()} for k, e in entry.items()}), flush=True)
    model.set_weights(source_weights)
    return results


def markdown(results: dict) -> str:
    clean_spec = results["sites"]["clean"]["before"]["specificity"]
    lines = [
        "# Simulated sites: AdaBN on validation perturbations (`python -m studies.site_eval`)",
        "",
        f"Bundle {results['bundle']}; default operating point `{results['operating_point']}` "
        f"(threshold {results['threshold']:.4f}, chosen on unadapted validation). Validation patients split in two: "
        f"AdaBN sees up to {results['n_adapt_available']} unlabeled images of one half; the {results['n_eval']} images "
        "of the other half are scored. Specificity target: within 0.03 of the clean value "
        f"({clean_spec:.3f}), sensitivity >= 0.93.",
        "",
        "| site | AUC before | AUC after (all) | sens before | sens after | spec before | spec after | spec after n=25/50/100/200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for site, e in results["sites"].items():
        b, a = e["before"], e["after_all"]
        curve = "/".join(f"{e[f'after_{n}']['specificity']:.3f}" for n in (25, 50, 100, 200))
        lines.append(
            f"| {site} | {b['roc_auc']:.3f} | {a['roc_auc']:.3f} | {b['sensitivity']:.3f} | {a['sensitivity']:.3f} | "
            f"{b['specificity']:.3f} | {a['specificity']:.3f} | {curve} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.site_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="split.csv with the bundle's validation rows")
    parser.add_argument("--out", type=Path, default=Path("results/adaptation"))
    args = parser.parse_args(argv)
    results = evaluate_sites(args.bundle, args.data, args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sites.json").write_text(json.dumps(results, indent=1))
    (args.out / "README.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
