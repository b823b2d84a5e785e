"""The floor: what the model and the preprocessing cost on their own, in this process, without any server.

- model: `InferenceSession.run` on an already-preprocessed (1, H, W, 3) tensor, with onnxruntime's default
  session options (its own thread pools: the machine's limit for one image, not the service's choice), fetching
  every output of the graph (the probability, the input check's statistics, the explanation activation);
- decode: `pneumonia.imaging.decode_image` + `to_model_input` on the sample JPEG bytes (what every request pays);
- throughput: decode + resize + run, on one default session shared by `c` threads, closed loop: onnxruntime
  alone at the concurrency the service is measured at (what the service's own req/s is compared with).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.stats import summarize_ms
from pneumonia.bundle import ONNX_FILENAME, BundleMetadata
from pneumonia.imaging import decode_image, to_model_input


def time_calls(function, iterations: int, warmup: int) -> list[float]:
    """Seconds per call of `function(i)`, after `warmup` untimed calls."""
    for i in range(warmup):
        function(i)
    timings = []
    for i in range(iterations):
        started = time.perf_counter()
        function(i)
        timings.append(time.perf_counter() - started)
    return timings


def default_session(bundle: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()  # onnxruntime's defaults: the floor is the machine's, not the service's
    options.log_severity_level = 3
    return ort.InferenceSession(str(bundle / ONNX_FILENAME), sess_options=options, providers=["CPUExecutionProvider"])


def measure_floor(
    bundle: Path, metadata: BundleMetadata, images: list[bytes], iterations: int, warmup: int = 20
) -> dict:
    session = default_session(bundle)
    size = metadata.input_size
    tensors = [to_model_input(decode_image(data), size)[None].astype(np.float32) for data in images]
    feeds = [{metadata.onnx_input_name: t} for t in tensors]
    outputs = [o.name for o in session.get_outputs()]  # all of them

    model = time_calls(lambda i: session.run(outputs, feeds[i % len(feeds)]), iterations, warmup)
    decode = time_calls(lambda i: to_model_input(decode_image(images[i % len(images)]), size), iterations, warmup)
    model_s = summarize_ms(model, (50, 95))
    decode_s = summarize_ms(decode, (50, 95))
    model_p50, decode_p50 = model_s["p50_ms"], decode_s["p50_ms"]
    if model_p50 is None or decode_p50 is None:  # no timings at all
        raise ValueError(f"measure_floor needs at least one iteration, got {iterations}")
    return {
        "onnx_session_options": {"threads": "onnxruntime defaults", "provider": "CPUExecutionProvider"},
        "input_shape": [1, *size, 3],
        "onnx_outputs": outputs,
        "iterations": iterations,
        "model_session_run": model_s,
        "decode_preprocess": decode_s,
        "model_plus_decode_p50_ms": round(model_p50 + decode_p50, 3),
    }


def measure_throughput(
    bundle: Path, metadata: BundleMetadata, images: list[bytes], concurrencies: tuple[int, ...], requests: int
) -> list[dict]:
    """Images/s of decode + resize + `session.run` (all outputs) with `c` threads sharing one default session."""
    session = default_session(bundle)
    outputs = [o.name for o in session.get_outputs()]
    size, name = metadata.input_size, metadata.onnx_input_name

    def one(i: int) -> None:
        session.run(outputs, {name: to_model_input(decode_image(images[i % len(images)]), size)[None]})

    return [
        {"concurrency": c, "requests": requests, "throughput_rps": closed_loop_rps(one, c, requests)}
        for c in concurrencies
    ]


def closed_loop_rps(function, concurrency: int, requests: int) -> float:
    """Calls per second of `function(i)` from `concurrency` threads, each calling again as soon as it returns."""
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(function, range(4 * concurrency)))  # warm-up
        started = time.perf_counter()
        list(pool.map(function, range(requests)))
        return round(requests / (time.perf_counter() - started), 1)
