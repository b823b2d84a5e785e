"""ONNX inference: the model's onnxruntime sessions (`run` is thread-safe and releases the GIL).

A lone request should use the whole machine, and many requests should not fight over it. So a classifier
holds two sessions over the same graph: a wide one (one intra-op thread per available core, spinning between
operators and stopped when the run returns) for a run while no other image is being scored, and a narrow one
(one thread) for a run while others are, where the concurrent requests themselves keep the cores busy. "Being
scored" spans an image's decoding and checks too (`working()`), not only its run. The designs compared, and
why this one: docs/benchmarks.md, `python -m bench.sessions`. "Available" respects the container's CPU limit
(cgroup quota) and the affinity mask, not the host's cores.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pneumonia.bundle import BundleError, BundleMetadata


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: the affinity mask, capped by a cgroup CPU quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_file).read_text().split()
            quota = fields[0]
            period = fields[1] if period_file is None else (cgroup / period_file).read_text().strip()
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1"):
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
        break
    return cpus


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph runs sequentially: parallelism is inside each operator
    # Pool threads spin between the graph's ~100 small operators: parking them instead cost a lone request
    # about a third of its run (bench/results/sessions.md). They stop spinning as soon as the run returns, so
    # an idle wide pool never burns the cores that other requests need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BundleError(f"{path}: onnxruntime cannot load the model ({exc})") from exc


class OnnxClassifier:
    def __init__(self, path: Path, metadata: BundleMetadata, *, threads: int = 0):
        """`threads`: intra-op threads of a lone run (0: every available core); an overlapping run uses one."""
        self.threads = threads or available_cpus()
        self.session = _session(path, self.threads)
        self._narrow = _session(path, 1) if self.threads > 1 else self.session
        self._lock = threading.Lock()
        self._in_flight = 0  # runs in progress
        self._working = 0  # images between decode and answer, inside `working()`
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if metadata.onnx_input_name not in inputs:
            raise BundleError(f"{path}: no ONNX input named {metadata.onnx_input_name!r} (has {sorted(inputs)})")
        if metadata.onnx_output_name not in outputs:
            raise BundleError(f"{path}: no ONNX output named {metadata.onnx_output_name!r} (has {sorted(outputs)})")
        shape = inputs[metadata.onnx_input_name].shape
        expected = [metadata.preprocessing.input_height, metadata.preprocessing.input_width, 3]
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
            raise BundleError(f"{path}: ONNX input shape {shape} does not match metadata (N, {expected})")
        self.input_name = metadata.onnx_input_name
        self.output_name = metadata.onnx_output_name
        self.input_size = metadata.input_size
        # The input check's per-depth statistics come from the same run as the probability (schema 2).
        self.statistics_names = list(metadata.input_check.statistics_outputs) if metadata.input_check else []
        missing = [name for name in self.statistics_names if name not in outputs]
        if missing:
            raise BundleError(f"{path}: no ONNX outputs {missing} named by the input check (has {sorted(outputs)})")
        self._outputs = [self.output_name, *self.statistics_names]
        # The activation /explain starts from, when the bundle's model.onnx has it (pneumonia.explain).
        self.activation_name = metadata.explain_activation.output if metadata.explain_activation else None
        if self.activation_name is not None and self.activation_name not in outputs:
            raise BundleError(f"{path}: no ONNX output {self.activation_name!r} (has {sorted(outputs)})")

    @contextmanager
    def working(self) -> Iterator[None]:
        """Marks one image's whole scoring (decode, checks, run) as in progress: a run picks the wide session
        only while no other image is anywhere in that work, not merely when no other run is, so a lone
        request's spinning pool never takes the cores that other requests' decoding and checks need."""
        with self._lock:
            self._working += 1
        try:
            yield
        finally:
            with self._lock:
                self._working -= 1

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 RGB 0..255 -> (N,) P(pneumonia)."""
        return self.run(batch)[0]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(N, H, W, 3) -> ((N,) P(pneumonia), one (N, 2C) statistics array per input-check depth): one run."""
        probabilities, statistics, _ = self._run(batch, self._outputs)
        return probabilities, statistics

    def run_with_activation(self, batch: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        """As `run`, plus the explanation activation (N, h, w, C) of the same run (None if the bundle has none)."""
        if self.activation_name is None:
            return (*self.run(batch), None)
        return self._run(batch, [*self._outputs, self.activation_name])

    def _run(self, batch: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(
                f"expected a batch of shape (N, {self.input_size[0]}, {self.input_size[1]}, 3), got {batch.shape}"
            )
        with self._lock:
            alone = self._in_flight == 0 and self._working <= 1
            session = self.session if alone else self._narrow
            self._in_flight += 1
        try:
            probabilities, *rest = session.run(names, {self.input_name: batch})
        finally:
            with self._lock:
                self._in_flight -= 1
        statistics = rest[: len(self.statistics_names)]
        activation = rest[len(self.statistics_names)] if len(names) > len(self._outputs) else None
        return np.asarray(probabilities, dtype=np.float64).reshape(batch.shape[0], -1)[:, 0], statistics, activation
