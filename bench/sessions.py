"""`python -m bench.sessions`: the onnxruntime session designs issue 24 asked to compare, in-process.

Each design answers the same closed-loop requests (decode + resize + one run fetching what /predict fetches)
from `c` threads: c=1 latency, and requests/s at c = 1, 4 and 16. The service keeps the best
(pneumonia/inference.py); this is the evidence, rerun on the machine it is to be judged on:

- `service`: the library's `OnnxClassifier` as served: a wide session (every available core, pool threads
  spinning during a run and stopped when it returns) while no other image is being scored, a one-thread
  session otherwise;
- `wide, no spinning`: a wide/narrow pair chosen by runs in flight, the wide pool parked between operators
  (the previous design);
- `wide, spinning kept`: that pair with the wide pool spinning, and left spinning after a run (onnxruntime's
  default);
- `one default session`: onnxruntime's defaults, all threads calling it concurrently;
- `one default session, serialised`: the same behind a lock (the machine-sized pool with a queue in front);
- `one thread per run`: one single-threaded session shared by all (the design before the wide session).
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.floor import closed_loop_rps, time_calls
from bench.servers import DEFAULT_BUNDLE, SAMPLES
from bench.stats import summarize_ms
from pneumonia.bundle import ONNX_FILENAME, BundleMetadata, read_metadata
from pneumonia.imaging import decode_image, to_model_input
from pneumonia.inference import OnnxClassifier

LEVELS = (1, 4, 16)
Run = Callable[[np.ndarray], object]
Score = Callable[[bytes], object]  # one request: decode + resize + run


def _session(path: Path, threads: int, spinning: bool | None, stop: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if stop:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _pair(path: Path, outputs: list[str], feed: str, *, spinning: bool, stop: bool) -> Run:
    """A wide session for a lone run, a one-thread session for overlapping ones (the service's shape)."""
    wide, narrow = _session(path, 0, spinning, stop), _session(path, 1, False)
    lock, in_flight = threading.Lock(), [0]

    def run(batch: np.ndarray) -> object:
        with lock:
            session = wide if in_flight[0] == 0 else narrow
            in_flight[0] += 1
        try:
            return session.run(outputs, {feed: batch})
        finally:
            with lock:
                in_flight[0] -= 1

    return run


def designs(bundle: Path, metadata: BundleMetadata) -> dict[str, Callable[[], Score]]:
    path = bundle / ONNX_FILENAME
    served = OnnxClassifier(path, metadata)
    outputs, feed = [served.output_name, *served.statistics_names], metadata.onnx_input_name
    serial = threading.Lock()
    size = metadata.input_size

    def plain(run: Run) -> Score:
        return lambda data: run(to_model_input(decode_image(data), size)[None])

    def service(data: bytes) -> object:
        with served.working():  # as Model.decode_and_assess marks each image
            return served.run(to_model_input(decode_image(data), size)[None])

    def shared(session: ort.InferenceSession, lock: threading.Lock | None = None) -> Run:
        def run(batch: np.ndarray) -> object:
            if lock is None:
                return session.run(outputs, {feed: batch})
            with lock:
                return session.run(outputs, {feed: batch})

        return run

    return {
        "service": lambda: service,
        "wide, no spinning": lambda: plain(_pair(path, outputs, feed, spinning=False, stop=False)),
        "wide, spinning kept": lambda: plain(_pair(path, outputs, feed, spinning=True, stop=False)),
        "one default session": lambda: plain(shared(_session(path, 0, None))),
        "one default session, serialised": lambda: plain(shared(_session(path, 0, None), serial)),
        "one thread per run": lambda: plain(shared(_session(path, 1, False))),
    }


def measure(score: Score, images: list[bytes], requests: int) -> dict:
    def one(i: int) -> None:
        score(images[i % len(images)])

    latency = summarize_ms(time_calls(one, requests, warmup=20), (50, 95))
    throughput = {f"c{c}": closed_loop_rps(one, c, requests) for c in LEVELS}
    return {"c1_p50_ms": latency["p50_ms"], "c1_p95_ms": latency["p95_ms"], "rps": throughput}


def render(rows: dict[str, dict], requests: int) -> str:
    lines = [
        f"Session designs, in-process, {requests} requests per level (decode + resize + run; "
        "`python -m bench.sessions`):",
        "",
        "| Design | c=1 p50 ms | c=1 p95 ms | req/s c=1 | req/s c=4 | req/s c=16 |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        rps = row["rps"]
        lines.append(
            f"| {name} | {row['c1_p50_ms']:.2f} | {row['c1_p95_ms']:.2f} | {rps['c1']} | {rps['c4']} | {rps['c16']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--requests", type=int, default=600, help="requests per measurement (default 600)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    metadata = read_metadata(args.bundle)
    images = [p.read_bytes() for p in sorted(SAMPLES.glob("*/*.jpeg"))]
    rows = {}
    for name, make in designs(args.bundle, metadata).items():
        rows[name] = measure(make(), images, args.requests)
        print(f"{name}: {rows[name]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sessions.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "sessions.md").write_text(render(rows, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
