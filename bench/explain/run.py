"""The explanation benchmark: which saliency map is faithful to the shipped model?

    python -m bench.explain --bundle models/default --data ../shared/data/chest_xray --out results/explanations

A fixed sample of validation images (the patient split recorded in results/final192/split.csv: true
positives, false negatives, true negatives and false positives at the bundle's default operating point),
every method of pneumonia.explain on each, then deletion/insertion (MoRF/LeRF) curves in logit space under
three replacement schemes, the model-randomisation check (Adebayo et al. 2018) and time per image. Writes
explanations.json and explanations.md; the default method is chosen by the rule in `choose_default`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from bench.explain.metrics import SCHEMES, area, bootstrap_mean, curves, spearman
from pneumonia.bundle import KERAS_FILENAME, read_metadata
from pneumonia.explain import BASELINES, DEFAULT_METHOD, METHOD_NAMES, build_method

log = logging.getLogger("bench.explain")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPLIT = REPO_ROOT / "results" / "final192" / "split.csv"
# The sample: per (true class, predicted class) group, how many images (fewer where the split has fewer).
QUOTAS = {
    ("PNEUMONIA", "PNEUMONIA"): 30,
    ("PNEUMONIA", "NORMAL"): 10,
    ("NORMAL", "NORMAL"): 17,
    ("NORMAL", "PNEUMONIA"): 3,
}
RANDOMISED_LAYERS = 8  # the top weight layers re-drawn for the sanity check (logit, Conv_1, blocks 16 and 15)
RANDOMISATION_PASS = 0.5  # a method passes when the upper end of its mean rank correlation's 95% CI is below


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT, help="split.csv of the bundle's training run")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "explanations")
    parser.add_argument("--steps", type=int, default=10, help="perturbation steps from 0 to 100%% replaced")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the sample quotas (quick runs)")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-only", action="store_true", help="only draw the validation grid of the served default")
    return parser.parse_args(argv)


class LogitModel:
    """The Keras model cut at its logit layer (calibrated: Platt is baked into it), scoring grey images."""

    def __init__(self, model, logit_layer: str, batch_size: int = 32):
        import keras
        import tensorflow as tf

        cut = keras.Model(model.inputs, model.get_layer(logit_layer).output)
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        self._fn = tf.function(
            lambda x: cut(x, training=False), input_signature=(tf.TensorSpec((None, *shape), tf.float32),)
        )
        self.batch_size = batch_size
        self.calls = 0

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        """(N, H, W) grey or (N, H, W, 3) model input, 0..255 -> (N,) logits."""
        batch = np.repeat(grey[..., None], 3, axis=-1) if grey.ndim == 3 else grey
        self.calls += len(batch)
        parts = [np.asarray(self._fn(batch[i : i + self.batch_size].astype(np.float32))).reshape(-1)
                 for i in range(0, len(batch), self.batch_size)]  # fmt: skip
        return np.concatenate(parts).astype(np.float64)


def select_sample(val, logits: np.ndarray, threshold: float, scale: float, seed: int) -> list[int]:
    """Indices into `val`, per (truth, prediction) group in QUOTAS order, drawn with a fixed seed."""
    logit_threshold = np.log(threshold / (1.0 - threshold))
    predicted = np.where(logits >= logit_threshold, "PNEUMONIA", "NORMAL")
    truth = np.where(val.labels == 1, "PNEUMONIA", "NORMAL")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for (true_class, predicted_class), quota in QUOTAS.items():
        group = np.flatnonzero((truth == true_class) & (predicted == predicted_class))
        take = min(len(group), max(1, round(quota * scale)))
        chosen += sorted(rng.choice(group, size=take, replace=False).tolist())
    return chosen


def randomised_copy(keras_path: Path, seed: int):
    """model.keras reloaded with its top RANDOMISED_LAYERS weight layers re-drawn from a normal with each
    array's own mean and std (learned structure gone, scale kept); batch-norm layers are left as trained."""
    import keras

    model = keras.models.load_model(keras_path, compile=False)
    rng = np.random.default_rng(seed)
    weighted = [layer for layer in model.layers if any(("kernel" in w.path) for w in layer.weights)]
    top = weighted[-RANDOMISED_LAYERS:]
    for layer in top:
        layer.set_weights([rng.normal(w.mean(), w.std(), w.shape).astype(w.dtype) for w in layer.get_weights()])
    return model, [layer.name for layer in top]


def relative_path(path: Path, root: Path) -> str:
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def method_maps(method, images: np.ndarray, signs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    return np.concatenate([method(images[i : i + batch_size], signs[i : i + batch_size])
                           for i in range(0, len(images), batch_size)])  # fmt: skip


def time_per_image(method, images: np.ndarray, signs: np.ndarray, repeats: int = 5) -> float:
    """Median seconds for one image (batch of 1) after a warm-up call, as the service calls it."""
    method(images[:1], signs[:1])
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        method(images[i % len(images)][None], signs[i % len(images)][None])
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def choose_default(summary: dict) -> tuple[str, str]:
    """The rule, fixed before the numbers: among methods that (1) beat BOTH baselines under EVERY scheme,
    i.e. the per-image paired difference of gaps (method - baseline, same images, same noise) has a 95%
    bootstrap CI wholly above 0, so the margin exceeds the interval, and (2) pass the randomisation check,
    take the highest mean gap averaged over schemes. None -> keep the served default and say so.
    (Unpaired CIs, also reported as `separated`, mostly measure how different the images are.)"""
    eligible = {
        name: float(np.mean([s["gap"]["mean"] for s in row["schemes"].values()]))
        for name, row in summary.items()
        if name not in BASELINES and row["beats_baselines"] and row["randomisation"]["passes"]
    }
    if not eligible:
        return DEFAULT_METHOD, f"no method met both criteria; kept {DEFAULT_METHOD}"
    best = max(eligible, key=eligible.__getitem__)
    return best, f"{best}: highest mean gap ({eligible[best]:.2f}) of {sorted(eligible)}"


def summarise(results: dict, randomisation: dict, timing: dict) -> dict:
    summary = {}
    for name, per_scheme in results.items():
        row = {"schemes": {}, "time_ms": 1000.0 * timing[name]}
        for scheme, areas in per_scheme.items():
            deletion, insertion = np.asarray(areas["deletion"]), np.asarray(areas["insertion"])
            row["schemes"][scheme] = {
                "deletion": bootstrap_mean(deletion),
                "insertion": bootstrap_mean(insertion),
                "gap": bootstrap_mean(insertion - deletion),
            }
        rho = bootstrap_mean(np.asarray(randomisation[name]))
        row["randomisation"] = {"spearman": rho, "passes": rho["ci_high"] < RANDOMISATION_PASS}
        summary[name] = row
    for name, row in summary.items():
        wins = {}
        for scheme, stats in row["schemes"].items():
            for baseline in BASELINES:
                if baseline in summary and baseline != name:
                    other = summary[baseline]["schemes"][scheme]["gap"]
                    mine = np.asarray(results[name][scheme]["insertion"]) - np.asarray(
                        results[name][scheme]["deletion"]
                    )
                    theirs = np.asarray(results[baseline][scheme]["insertion"]) - np.asarray(
                        results[baseline][scheme]["deletion"]
                    )
                    wins[f"{scheme}/{baseline}"] = {
                        "separated": stats["gap"]["ci_low"] > other["ci_high"],
                        "paired_difference": bootstrap_mean(mine - theirs),
                    }
        row["versus_baselines"] = wins
        row["beats_baselines"] = bool(wins) and all(w["paired_difference"]["ci_low"] > 0 for w in wins.values())
    return summary


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.2f} [{stat['ci_low']:.2f}, {stat['ci_high']:.2f}]"


def markdown(report: dict) -> str:
    summary = report["summary"]
    lines = [
        (
            f"Explanation faithfulness on {report['sample']['n']} validation images "
            f"({report['sample']['groups']}), {report['steps']} steps, {report['block']}x{report['block']} px "
            "blocks, score = logit of the explained class (mean over images, 95% bootstrap CI)."
        ),
        "",
        "| Method | Layers | Gap blur | Gap mean | Gap ROAD | Beats blob & random (paired, all schemes) | Randomisation Spearman | ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        gaps = [_fmt(row["schemes"][s]["gap"]) for s in SCHEMES]
        beats = "-" if name in BASELINES else ("yes" if row["beats_baselines"] else "no")
        rand = _fmt(row["randomisation"]["spearman"]) + (" pass" if row["randomisation"]["passes"] else " fail")
        layers = ", ".join(report["methods"][name]["layers"]) or "-"
        lines.append(f"| {name} | {layers} | {' | '.join(gaps)} | {beats} | {rand} | {row['time_ms']:.0f} |")
    lines += ["", "| Method | " + " | ".join(f"Deletion {s} (lower) | Insertion {s} (higher)" for s in SCHEMES) + " |",
              "|---|" + "---|" * (2 * len(SCHEMES))]  # fmt: skip
    for name, row in summary.items():
        cells = [f"{_fmt(row['schemes'][s]['deletion'])} | {_fmt(row['schemes'][s]['insertion'])}" for s in SCHEMES]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", f"Default: **{report['default']['method']}** ({report['default']['reason']}).", ""]
    return "\n".join(lines)


def write_grid(model, metadata, val, val_logits: np.ndarray, method_name: str, out_dir: Path) -> Path:
    """The validation overlay grid (training.report.cam_grid) with `method_name`, each map for the predicted class."""
    from training.report import cam_grid

    method = build_method(method_name, model, metadata.gradcam_layer, metadata.logit_layer)
    probabilities = 1.0 / (1.0 + np.exp(-val_logits))
    title = (
        f"{metadata.name}: {method_name} ({', '.join(method.layers) or 'baseline'}) on validation (research use only)"
    )
    threshold = metadata.operating_point().threshold
    out = out_dir / f"validation_grid_{method_name}.png"
    return cam_grid(val.images, val.labels, probabilities, threshold, method, out, title)


def main(argv: list[str] | None = None) -> int:
    import keras

    from training.data import CLASS_NAMES, decode_samples, read_split

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.process_time(), time.perf_counter()
    metadata = read_metadata(args.bundle)
    size = metadata.input_size
    model = keras.models.load_model(args.bundle / KERAS_FILENAME, compile=False)
    score = LogitModel(model, metadata.logit_layer)

    val = decode_samples(read_split(args.split, args.data)["val"], size, workers=2, desc="validation")
    threshold = metadata.operating_point().threshold
    val_logits = score(val.images.astype(np.float32))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.grid_only:
        log.info("wrote %s", write_grid(model, metadata, val, val_logits, DEFAULT_METHOD, args.out))
        return 0
    chosen = select_sample(val, val_logits, threshold, args.scale, args.seed)
    images = val.images[chosen].astype(np.float32)
    logits = val_logits[chosen]
    signs = np.where(logits >= np.log(threshold / (1 - threshold)), 1.0, -1.0).astype(np.float32)
    log.info("sample: %d images (%d explained as PNEUMONIA)", len(chosen), int((signs > 0).sum()))

    names = [n for n in args.methods.split(",") if n]
    fractions = np.linspace(0.0, 1.0, args.steps + 1)
    random_model, randomised = randomised_copy(args.bundle / KERAS_FILENAME, args.seed)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}  # method -> scheme -> curve -> per-image areas
    randomisation: dict[str, list[float]] = {}
    timing: dict[str, float] = {}
    described: dict[str, dict[str, list[int] | list[str]]] = {}
    for name in names:
        method = build_method(name, model, metadata.gradcam_layer, metadata.logit_layer)
        described[name] = {"layers": list(method.layers), "native_size": list(method.native_size)}
        maps = method_maps(method, images, signs)
        timing[name] = time_per_image(method, images, signs)
        after = method_maps(
            build_method(name, random_model, metadata.gradcam_layer, metadata.logit_layer), images, signs
        )
        randomisation[name] = [spearman(a, b) for a, b in zip(maps, after, strict=True)]
        results[name] = {}
        for s, scheme in enumerate(SCHEMES):
            deletion, insertion = [], []
            for i, (image, saliency, sign) in enumerate(zip(images[..., 0], maps, signs, strict=True)):
                c = curves(
                    image, saliency, float(sign), score, scheme, fractions, seed=args.seed * 100_000 + i * 10 + s
                )
                deletion.append(area(c["morf"], fractions))
                insertion.append(area(c["lerf"], fractions))
            results[name][scheme] = {"deletion": deletion, "insertion": insertion}
        log.info("%s done (%.0f s CPU so far)", name, time.process_time() - started[0])

    summary = summarise(results, randomisation, timing)
    default, reason = choose_default(summary)
    report = {
        "bundle": {"name": metadata.name, "version": metadata.version, "keras_sha256": metadata.checksums.keras_sha256},
        "command": "python -m bench.explain " + " ".join(argv if argv is not None else []),
        "host": platform.platform(),
        "sample": {
            "n": len(chosen),
            "groups": ", ".join(f"{q} {t}->{p}" for (t, p), q in QUOTAS.items()),
            "threshold": threshold,
            "paths": [relative_path(val.paths[i], args.data) for i in chosen],
            "true_class": [CLASS_NAMES[int(val.labels[i])] for i in chosen],
            "explained_class": ["PNEUMONIA" if s > 0 else "NORMAL" for s in signs],
        },
        "steps": args.steps,
        "block": 4,
        "schemes": list(SCHEMES),
        "randomised_layers": randomised,
        "methods": described,
        "summary": summary,
        "per_image": {"areas": results, "randomisation_spearman": randomisation},
        "default": {"method": default, "reason": reason, "served_default": DEFAULT_METHOD},
        "cpu_seconds": time.process_time() - started[0],
        "wall_seconds": time.perf_counter() - started[1],
        "model_evaluations": score.calls,
    }
    write_grid(model, metadata, val, val_logits, default, args.out)
    (args.out / "explanations.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "explanations.md").write_text(markdown(report))
    print(markdown(report))
    return 0
