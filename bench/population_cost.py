"""`python -m bench.population_cost`: what the population and image-quality checks add to the request path.

Issue 19's target: the request path grows by <= 0.5 ms. The shipped bundle's `Model` is timed on the committed
samples (tests/data/samples) with three input checks over the same ONNX session, in-process:

- `full`: the bundle's own check (schema 3: DICOM tags, image quality, the learned population check);
- `no population/quality`: the same check with the population detector and the image-quality range removed
  (the bundle's declared population kept, so only the DICOM age rule remains of issue 19);
- `schema 2`: the check a schema-2 bundle gets (no population, no detector, no quality range).

Each repetition times every variant once per sample, in a shuffled order, so that a neighbour's load falls on
all of them alike; medians over many repetitions, and the median of the paired differences (full minus the
others). Two timings: `decode_and_assess` (decode, checks, ONNX run: the request path without HTTP) and the
checks alone (`inspect` + `score` on the statistics of a run done beforehand), where the difference lives
without the ONNX run's noise. The 5th-95th percentile spread and mean (`exposure`) are computed in every
variant (the verdict's `measurements` report them), so they are also timed on their own: the growth is at most
the checks' paired difference plus that.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.servers import DEFAULT_BUNDLE, SAMPLES
from pneumonia.imaging import to_model_input
from pneumonia.input_check import InputChecker, channel_features, exposure
from pneumonia.model import Model

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MS = 0.5
VARIANTS = ("full", "no population/quality", "schema 2")


def checkers(model: Model) -> dict[str, InputChecker]:
    full = model.checker
    return {
        "full": full,
        "no population/quality": InputChecker(full.model, full.unavailable_reason, population=full.population),
        "schema 2": InputChecker(full.model, full.unavailable_reason),
    }


def _median_ms(seconds: list[float]) -> float:
    return round(float(np.median(seconds)) * 1000.0, 4)


def _load() -> dict[str, object]:
    from bench.cli import other_cpu_processes

    return {
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "usable_cpus": len(os.sched_getaffinity(0)),
        "neighbours": other_cpu_processes(),
        "nice": os.nice(0),
    }


def measure(bundle: Path, repetitions: int, *, samples: Path = SAMPLES, seed: int = 0) -> dict[str, object]:
    """Median ms per call for each variant (end to end and checks only), paired differences, and components."""
    model = Model.load(bundle, explain=False)
    variants = checkers(model)
    images = [p.read_bytes() for p in sorted(samples.glob("*/*.jpeg"))]
    decoded = [model.decode(data) for data in images]
    batches = [to_model_input(image, model.metadata.input_size)[None] for image in decoded]
    statistics = [model.classifier.run(batch)[1] for batch in batches]
    rng = random.Random(seed)
    load_before = _load()

    def assess(name: str, i: int) -> Callable[[], object]:
        model.checker = variants[name]
        return lambda: model.decode_and_assess(images[i], "warn")

    def checks(name: str, i: int) -> Callable[[], object]:
        checker = variants[name]

        def run() -> None:
            check, _ = checker.inspect(decoded[i], batches[i][0, :, :, 0], "warn")
            checker.score(check, statistics[i])

        return run

    timings: dict[str, dict[str, list[float]]] = {kind: {v: [] for v in VARIANTS} for kind in ("assess", "checks")}
    paired: dict[str, dict[str, list[float]]] = {kind: {v: [] for v in VARIANTS[1:]} for kind in timings}
    for kind, make in (("assess", assess), ("checks", checks)):
        for i in range(len(images)):  # warm-up: one untimed call of each
            for name in VARIANTS:
                make(name, i)()
        for _ in range(repetitions):
            for i in range(len(images)):
                order = list(VARIANTS)
                rng.shuffle(order)
                took = {}
                for name in order:
                    call = make(name, i)
                    started = time.perf_counter()
                    call()
                    took[name] = time.perf_counter() - started
                    timings[kind][name].append(took[name])
                for name in VARIANTS[1:]:
                    paired[kind][name].append(took["full"] - took[name])
    model.checker = variants["full"]
    components: dict[str, list[float]] = {"exposure": [], "population_detector": []}
    detector = variants["full"].population_detector
    features = [np.concatenate([channel_features(s) for s in run], axis=1) for run in statistics]
    for _ in range(repetitions):
        for i in range(len(images)):
            started = time.perf_counter()
            exposure(batches[i][0, :, :, 0])
            components["exposure"].append(time.perf_counter() - started)
            if detector is not None:
                started = time.perf_counter()
                detector.probability(features[i])
                components["population_detector"].append(time.perf_counter() - started)
    calls = repetitions * len(images)
    result: dict[str, object] = {
        "bundle": f"{model.metadata.name} {model.metadata.version}",
        "schema_version": model.metadata.schema_version,
        "samples": len(images),
        "repetitions": repetitions,
        "calls_per_variant": calls,
        "policy": "warn",
        "median_ms": {kind: {v: _median_ms(t) for v, t in rows.items()} for kind, rows in timings.items()},
        "median_paired_difference_ms": {
            kind: {f"full - {v}": _median_ms(d) for v, d in rows.items()} for kind, rows in paired.items()
        },
        "components_median_ms": {k: _median_ms(v) for k, v in components.items() if v},
        "target_ms": TARGET_MS,
        "load_before": load_before,
        "load_after": _load(),
        "command": "nice -n 10 python -m bench.population_cost",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    growth = _median_ms(paired["checks"]["schema 2"]) + _median_ms(components["exposure"])
    result["growth_upper_bound_ms"] = round(growth, 4)
    return result


def render(result: dict) -> str:
    kinds = {"assess": "`decode_and_assess` (decode, checks, ONNX run)", "checks": "the checks alone"}
    median, paired = result["median_ms"], result["median_paired_difference_ms"]
    lines = [
        f"What the population and image-quality checks cost per request (`{result['command']}`, in-process, "
        f"bundle {result['bundle']}, {result['samples']} committed samples x {result['repetitions']} repetitions, "
        "variants interleaved in a shuffled order; medians):",
        "",
        "| Timed | " + " | ".join(VARIANTS) + " | full - no population/quality | full - schema 2 |",
        "|---|" + "---|" * (len(VARIANTS) + 2),
    ]
    for kind, label in kinds.items():
        lines.append(
            f"| {label} | "
            + " | ".join(f"{median[kind][v]:.3f} ms" for v in VARIANTS)
            + " | "
            + " | ".join(f"{paired[kind][f'full - {v}']:+.3f} ms" for v in VARIANTS[1:])
            + " |"
        )
    components = result["components_median_ms"]
    load = result["load_before"]
    lines += [
        "",
        "Computed in every variant (the verdict reports them): the exposure measurement "
        f"{components['exposure']:.3f} ms. The learned population check's logistic regression alone: "
        f"{components.get('population_detector', float('nan')):.3f} ms. Growth of the request path, at most the "
        f"checks' paired difference against schema 2 plus the exposure measurement: "
        f"**{result['growth_upper_bound_ms']:.3f} ms** (target <= {result['target_ms']} ms).",
        "",
        f"Load: {load['usable_cpus']} usable cores, load average {load['loadavg']} before and "
        f"{result['load_after']['loadavg']} after, run at nice {load['nice']}"
        + (f"; sharing the machine with {'; '.join(load['neighbours'])}" if load["neighbours"] else "")
        + f". Measured {result['measured_at']}.",
    ]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "population_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "population_cost.md").write_text(render(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.population_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--repetitions", type=int, default=300, help="timed calls per sample and variant")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(args.bundle, args.repetitions)
    write(result, args.out)
    print(render(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
