"""`python -m bench`: floor, service and Keras baseline in one run, on one machine, with one bundle."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

from app.config import Settings
from bench.floor import measure_floor, measure_throughput
from bench.loadgen import Upload, round_trip, run_level
from bench.report import compute_ratios, evaluate_targets, render_markdown
from bench.servers import DEFAULT_BUNDLE, SAMPLES, Server, clean_env
from pneumonia.bundle import METADATA_FILENAME, read_metadata

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (1, 4, 16)
RAW_LEVELS = (1, 4)  # the raw-body form of /predict (Content-Type image/jpeg): its own rows
SERVICE_UVICORN_ARGS = ("--no-access-log",)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine ---------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields), idle


def busy_between(start: tuple[int, int], end: tuple[int, int]) -> float:
    """System-wide CPU busy % between two `_cpu_times()` readings."""
    return round(100.0 * (1 - (end[1] - start[1]) / max(end[0] - start[0], 1)), 1)


def busy_percent(seconds: float = 2.0) -> float:
    """System-wide CPU busy % over `seconds` (while this process sleeps)."""
    start = _cpu_times()
    time.sleep(seconds)
    return busy_between(start, _cpu_times())


def other_cpu_processes() -> list[str]:
    """Command lines of known CPU-heavy neighbours (a training run) that are not ours."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("T", "t", "Z"):  # stopped (e.g. paused with SIGSTOP for this run) or exited: not using CPU
            continue
        if "training train" in cmdline or "training evaluate" in cmdline:
            found.append(f"pid {entry.name}: {cmdline[:120]}")
    return found


def machine_info(idle_seconds: float) -> dict:
    busy = busy_percent(idle_seconds)
    neighbours = other_cpu_processes()
    contended = busy > 15.0 or bool(neighbours)
    note = "; ".join(filter(None, [f"{busy}% CPU busy before start" if busy > 15.0 else "", *neighbours]))
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "idle_check": {"seconds": idle_seconds, "busy_pct": busy},
        "contended": contended,
        "contention_note": note,
    }


def versions() -> dict[str, str]:
    out = {}
    for package in (
        "fastapi",
        "starlette",
        "uvicorn",
        "httpx",
        "onnxruntime",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "numpy",
        "pillow",
    ):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[package] = importlib_metadata.version(package)
    return out


# --- phases ----------------------------------------------------------------------------------------------------
def sample_paths() -> list[Path]:
    paths = sorted(SAMPLES.glob("*/*.jpeg"))
    if not paths:
        raise SystemExit(f"no sample JPEGs under {SAMPLES}")
    return paths


async def levels(
    server: Server,
    path: str,
    uploads: list[Upload],
    requests: int,
    timeout_s: float,
    warmup_per_worker: int = 2,
    concurrencies: tuple[int, ...] = LEVELS,
    label: str = "",
) -> list[dict]:
    out = []
    for concurrency in concurrencies:
        result = await run_level(
            server.base_url, path, uploads, concurrency, requests,
            warmup=max(warmup_per_worker * concurrency, 4), timeout_s=timeout_s, cpu_reader=server.cpu_seconds,
        )  # fmt: skip
        summary = result.summary()
        lat = summary["latency_ok"]
        log(
            f"  {server.name} {path}{label} c={concurrency}: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
            f"{summary['throughput_rps']} req/s, 503 {summary['busy_503_with_retry_after']}, errors {summary['errors']}"
        )
        out.append(summary)
    return out


async def bench_service(bundle: Path, uploads: list[Upload], raw_uploads: list[Upload], args, settings: dict) -> dict:
    # --no-access-log as in the Dockerfile's CMD: the app writes its own access log, uvicorn's would repeat each line.
    server = Server("service", "app.main:app", clean_env(PNEUMONIA_MODEL_DIR=str(bundle)), "/health/ready", RESULTS / "raw" / "service.log",
                    args=SERVICE_UVICORN_ARGS)  # fmt: skip
    log(f"starting the service on {server.base_url} (bundle {bundle})")
    server.start()
    try:
        memory: dict[str, int | list[tuple[int, int]] | None] = {"rss_after_startup_kib": server.memory_kib()["VmRSS"]}
        log(f"  ready in {server.startup_s:.1f} s; warming up")
        for path, concurrency, n in (
            ("/predict", 1, 30),
            ("/predict", 4, 40),
            ("/explain", 1, 10),
            ("/explain", 4, 12),
        ):
            await run_level(server.base_url, path, uploads, concurrency, n, timeout_s=120)
        memory["rss_after_warmup_kib"] = server.memory_kib()["VmRSS"]

        load_n, load_c, step = args.memory_requests, 4, max(args.memory_requests // 10, 1)
        log(f"  memory phase: {load_n} x /predict at c={load_c}")
        samples: list[tuple[int, int]] = []
        load_errors, done = 0, 0
        while done < load_n:
            chunk = min(step, load_n - done)
            result = await run_level(server.base_url, "/predict", uploads, load_c, chunk, timeout_s=30)
            load_errors += result.errors
            done += chunk
            samples.append((done, server.memory_kib()["VmRSS"]))
        memory.update(
            rss_after_load_kib=samples[-1][1], load_requests=load_n, load_concurrency=load_c,
            load_errors=load_errors, rss_samples_kib=samples,
        )  # fmt: skip

        trip = await round_trip(server.base_url, "/health/live", 200)
        log(f"  round trip GET /health/live c=1: p50 {trip['p50_ms']} ms")
        log("  latency levels")
        predict = await levels(server, "/predict", uploads, args.requests, 30.0)
        predict_raw = await levels(
            server, "/predict", raw_uploads, args.requests, 30.0, concurrencies=RAW_LEVELS, label=" (raw body)"
        )
        explain = await levels(server, "/explain", uploads, args.explain_requests, 120.0, warmup_per_worker=1)
        limit = settings["max_concurrency"] + settings["max_queue"]
        over_c = 2 * limit
        log(f"  over the limit: /predict at c={over_c} (limit {limit} in flight)")
        over = await run_level(
            server.base_url,
            "/predict",
            uploads,
            over_c,
            args.overload_requests,
            timeout_s=30,
            cpu_reader=server.cpu_seconds,
        )
        overload = over.summary()
        log(
            f"  c={over_c}: 200 {overload['ok']}, 503+Retry-After {overload['busy_503_with_retry_after']}, errors {overload['errors']}"
        )
        status = server.memory_kib()
        memory.update(rss_end_kib=status["VmRSS"], hwm_end_kib=status["VmHWM"], threads_end=status.get("Threads"))
    finally:
        code = server.stop()
    log(f"  service stopped (exit code {code})")
    return {"startup_s": round(server.startup_s or 0, 2), "predict": predict, "predict_raw_body": predict_raw, "round_trip": trip, "explain": explain,
            "overload": overload, "memory": memory, "exit_code": code}  # fmt: skip


async def bench_baseline(bundle: Path, uploads: list[Upload], args) -> dict:
    server = Server(
        "baseline",
        "bench.baseline_server:app",
        clean_env(BENCH_BASELINE_MODEL_DIR=str(bundle)),
        "/health",
        RESULTS / "raw" / "baseline.log",
    )
    log(f"starting the Keras baseline on {server.base_url}")
    server.start()
    try:
        memory = {"rss_after_startup_kib": server.memory_kib()["VmRSS"]}
        log(f"  ready in {server.startup_s:.1f} s; warming up")
        for path, n in (("/predict", 10), ("/explain", 5)):
            await run_level(server.base_url, path, uploads, 1, n, timeout_s=300)
        memory["rss_after_warmup_kib"] = server.memory_kib()["VmRSS"]
        predict = await levels(server, "/predict", uploads, args.baseline_requests, 120.0)
        explain = await levels(server, "/explain", uploads, args.baseline_explain_requests, 300.0, warmup_per_worker=1)
        status = server.memory_kib()
        memory.update(rss_end_kib=status["VmRSS"], hwm_end_kib=status["VmHWM"])
    finally:
        code = server.stop()
    log(f"  baseline stopped (exit code {code})")
    return {
        "startup_s": round(server.startup_s or 0, 2),
        "predict": predict,
        "explain": explain,
        "memory": memory,
        "exit_code": code,
    }


def bench_score(bundle: Path, paths: list[Path], files: int) -> dict:
    """`python -m app.score` over `files` copies of the samples, as a user runs it: its own images/s line."""
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(files):
            shutil.copy(paths[i % len(paths)], folder / f"{i:05d}_{paths[i % len(paths)].name}")
        command = [sys.executable, "-m", "app.score", str(folder), "--out", str(Path(tmp) / "scores.csv"),
                   "--model-dir", str(bundle)]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=900)
        wall = time.perf_counter() - started
    found = re.search(r"scored (\d+) files \((\d+) not answered\) in ([\d.]+) s, ([\d.]+) images/s", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"app.score failed (exit {done.returncode}): {done.stderr[-500:]}")
    log(f"  app.score: {found[1]} files in {found[3]} s, {found[4]} images/s ({wall:.1f} s with start-up)")
    return {"files": int(found[1]), "not_answered": int(found[2]), "scoring_s": float(found[3]),
            "images_per_s": float(found[4]), "wall_s_with_startup": round(wall, 1)}  # fmt: skip


# --- main ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="The other benchmarks: pneumonia bench explain | explain-latency | ood | sessions (each with --help).",
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle (default: models/default)")
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (few requests; numbers are indicative only)"
    )
    parser.add_argument(
        "--requests", type=int, help="service /predict requests per concurrency level (default 500; quick 60)"
    )
    parser.add_argument(
        "--explain-requests", type=int, help="service /explain requests per level (default max(50, N/4))"
    )
    parser.add_argument(
        "--baseline-requests", type=int, help="baseline /predict requests per level (default max(50, N/5))"
    )
    parser.add_argument(
        "--baseline-explain-requests", type=int, help="baseline /explain requests per level (default 50)"
    )
    parser.add_argument(
        "--memory-requests", type=int, help="/predict requests at c=4 in the memory phase (default 2000)"
    )
    parser.add_argument("--overload-requests", type=int, help="requests beyond the concurrency limit (default 400)")
    parser.add_argument("--floor-iterations", type=int, help="timed calls per floor step (default 500)")
    parser.add_argument("--score-files", type=int, help="files `python -m app.score` scores (default 600)")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not start the Keras baseline (no speed-up ratios)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for benchmark.json and benchmark.md")
    return parser


def resolve_counts(args: argparse.Namespace) -> None:
    quick = args.quick
    n = args.requests or (60 if quick else 500)
    args.requests = n
    args.explain_requests = args.explain_requests or (20 if quick else max(50, n // 4))
    args.baseline_requests = args.baseline_requests or (20 if quick else max(50, n // 5))
    args.baseline_explain_requests = args.baseline_explain_requests or (10 if quick else 50)
    args.memory_requests = args.memory_requests or (200 if quick else 2000)
    args.overload_requests = args.overload_requests or (120 if quick else 400)
    args.floor_iterations = args.floor_iterations or (100 if quick else 500)
    args.score_files = args.score_files or (60 if quick else 600)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_counts(args)
    bundle = args.bundle.resolve()
    if not (bundle / METADATA_FILENAME).is_file():
        print(f"error: {bundle} is not a model bundle (no {METADATA_FILENAME}); pass --bundle DIR, e.g. one written by "
              "`python -m training export --run RUN --out DIR`", file=sys.stderr)  # fmt: skip
        return 2
    meta = read_metadata(bundle)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    machine = machine_info(2.0 if args.quick else 5.0)
    cpu_at_start = _cpu_times()
    if machine["contended"]:
        log(f"WARNING: the CPU is not idle ({machine['contention_note']}); figures will not be comparable")
    paths = sample_paths()
    images = [p.read_bytes() for p in paths]
    uploads = [Upload.from_file(p) for p in paths]
    raw_uploads = [Upload.raw(p) for p in paths]
    defaults = Settings.model_fields
    settings = {k: defaults[k].default for k in ("max_concurrency", "max_queue", "onnx_threads")}

    log(f"floor: {args.floor_iterations} calls each")
    floor = measure_floor(bundle, meta, images, args.floor_iterations)
    log(
        f"  session.run p50 {floor['model_session_run']['p50_ms']} ms, decode+preprocess p50 {floor['decode_preprocess']['p50_ms']} ms"
    )
    floor["throughput"] = measure_throughput(bundle, meta, images, LEVELS, args.requests)
    log(
        "  onnxruntime alone: "
        + ", ".join(f"c={lv['concurrency']} {lv['throughput_rps']} req/s" for lv in floor["throughput"])
    )
    service = asyncio.run(bench_service(bundle, uploads, raw_uploads, args, settings))
    baseline = None if args.skip_baseline else asyncio.run(bench_baseline(bundle, uploads, args))
    log(f"app.score: {args.score_files} files")
    score = bench_score(bundle, paths, args.score_files)

    machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    machine["busy_pct_during_run"] = busy_between(cpu_at_start, _cpu_times())
    if not machine["contended"] and other_cpu_processes():
        machine.update(contended=True, contention_note="a training process started during the run")
    result = {
        "benchmark_version": 2,
        "quick": args.quick,
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "machine": machine,
        "versions": versions(),
        "bundle": {
            "dir": str(bundle),
            "name": meta.name,
            "version": meta.version,
            "backbone": meta.backbone,
            "input_size": list(meta.input_size),
            "onnx_sha256": meta.checksums.onnx_sha256,
            "keras_sha256": meta.checksums.keras_sha256,
            "gradcam_layer": meta.gradcam_layer,
        },  # fmt: skip
        "service_settings": settings,
        "parameters": {
            "images": len(paths),
            "image_names": [p.name for p in paths],
            "levels": list(LEVELS),
            **{
                k: getattr(args, k)
                for k in (
                    "requests",
                    "explain_requests",
                    "baseline_requests",
                    "baseline_explain_requests",
                    "memory_requests",
                    "overload_requests",
                    "floor_iterations",
                    "score_files",
                )
            },
        },  # fmt: skip
        "floor": floor,
        "service": service,
        "baseline": baseline,
        "score": score,
    }
    result["ratios"] = compute_ratios(result)
    result["targets"] = evaluate_targets(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "benchmark.md").write_text(render_markdown(result))
    log(f"wrote {args.out / 'benchmark.json'} and benchmark.md in {result['duration_s']:.0f} s")
    for target in result["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        log(f"  {verdict:>12}: {target['id']} = {target['value']} ({target['comparator']} {target['threshold']})")
    return 0
