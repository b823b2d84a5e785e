"""Ratios, targets (met/missed) and the Markdown rendering of `benchmark.json`."""

from __future__ import annotations

from bench.stats import ratio

# /predict req/s at c=4 in the last idle run before the two-session design (2026-11-26, 1 intra-op thread per
# run): issue 24's "not below today's" throughput target.
REFERENCE_C4_RPS = 165.2


def _level(levels: list[dict], concurrency: int) -> dict | None:
    return next((lv for lv in levels if lv["concurrency"] == concurrency), None)


def _p50(levels: list[dict], concurrency: int) -> float | None:
    level = _level(levels, concurrency)
    return None if level is None else level["latency_ok"]["p50_ms"]


def _p95(levels: list[dict], concurrency: int) -> float | None:
    level = _level(levels, concurrency)
    return None if level is None else level["latency_ok"]["p95_ms"]


def _rps(levels: list[dict], concurrency: int) -> float | None:
    level = _level(levels, concurrency)
    return None if level is None else level["throughput_rps"]


def compute_ratios(result: dict) -> dict:
    service, baseline, floor = result["service"], result.get("baseline") or {}, result["floor"]
    memory = service["memory"]
    growth = None
    if memory.get("rss_after_warmup_kib") and memory.get("rss_after_load_kib"):
        growth = round(
            100.0 * (memory["rss_after_load_kib"] - memory["rss_after_warmup_kib"]) / memory["rss_after_warmup_kib"], 2
        )
    return {
        "service_vs_floor_predict_p50_c1": ratio(_p50(service["predict"], 1), floor["model_plus_decode_p50_ms"]),
        "speedup_vs_baseline_predict_p50_c1": ratio(_p50(baseline.get("predict", []), 1), _p50(service["predict"], 1)),
        "speedup_vs_baseline_explain_p50_c1": ratio(_p50(baseline.get("explain", []), 1), _p50(service["explain"], 1)),
        "service_raw_body_vs_floor_predict_p50_c1": ratio(
            _p50(service.get("predict_raw_body", []), 1), floor["model_plus_decode_p50_ms"]
        ),
        "speedup_vs_baseline_predict_raw_body_p50_c1": ratio(
            _p50(baseline.get("predict", []), 1), _p50(service.get("predict_raw_body", []), 1)
        ),
        "service_vs_floor_predict_p95_c1": ratio(_p95(service["predict"], 1), floor["model_plus_decode_p50_ms"]),
        **{
            f"service_vs_onnxruntime_alone_throughput_c{lv['concurrency']}": ratio(
                _rps(service["predict"], lv["concurrency"]), lv["throughput_rps"]
            )
            for lv in floor.get("throughput", [])
        },
        "speedup_vs_baseline_predict_throughput_c4": ratio(
            _rps(service["predict"], 4), _rps(baseline.get("predict", []), 4)
        ),
        "service_explain_over_predict_p50_c1": ratio(_p50(service["explain"], 1), _p50(service["predict"], 1)),
        "service_memory_growth_pct": growth,
    }


def _target(
    tid: str, description: str, value, comparator: str, threshold: float, extra_ok: bool = True, note: str = ""
) -> dict:
    if value is None:
        met = None
    elif comparator == ">=":
        met = value >= threshold and extra_ok
    else:
        met = value <= threshold and extra_ok
    return {
        "id": tid,
        "description": description,
        "value": value,
        "comparator": comparator,
        "threshold": threshold,
        "met": met,
        "note": note,
    }


def evaluate_targets(result: dict) -> list[dict]:
    r = result["ratios"]
    service = result["service"]
    c16 = _level(service["predict"], 16)
    overload = service.get("overload")
    all_levels = service["predict"] + service["explain"] + ([overload] if overload else [])
    timeouts = sum(lv["error_breakdown"]["timeouts"] for lv in all_levels)
    targets = [
        _target(
            "predict_vs_baseline",
            "/predict p50 at c=1 at least 10x faster than the Keras baseline",
            r["speedup_vs_baseline_predict_p50_c1"],
            ">=",
            10.0,
        ),
        _target(
            "predict_vs_floor",
            "/predict p50 at c=1 at most 1.5x the floor (decode + resize + onnxruntime with default threads, all outputs)",
            r["service_vs_floor_predict_p50_c1"],
            "<=",
            1.5,
        ),
        _target(
            "throughput_c4",
            f"/predict req/s at c=4 not below the last idle run's {REFERENCE_C4_RPS:g}",
            _rps(service["predict"], 4),
            ">=",
            REFERENCE_C4_RPS,
        ),
        _target(
            "no_errors_c16",
            "/predict at c=16: no errors",
            None if c16 is None else c16["errors"],
            "<=",
            0,
        ),
    ]
    if overload:
        busy, errors = overload["busy_503_with_retry_after"], overload["errors"]
        met = busy > 0 and errors == 0 and timeouts == 0
        targets.append(
            {
                "id": "backpressure",
                "comparator": "==",
                "threshold": 0,
                "value": errors + timeouts,
                "description": f"beyond the concurrency limit (c={overload['concurrency']}): 503 with Retry-After, never timeouts or other errors",
                "met": met if busy > 0 else None,
                "note": f"503+Retry-After: {busy}, errors: {errors}, timeouts in all service levels: {timeouts}"
                + ("" if busy > 0 else " (no 503 seen: the limit was not reached, target not exercised)"),
            }
        )
    targets += [
        _target(
            "explain_vs_baseline",
            "/explain p50 at c=1 at least 5x faster than the baseline's keras-io Grad-CAM",
            r["speedup_vs_baseline_explain_p50_c1"],
            ">=",
            5.0,
        ),
        _target(
            "memory_growth",
            f"RSS after {service['memory'].get('load_requests')} requests within 10% of RSS after warm-up",
            r["service_memory_growth_pct"],
            "<=",
            10.0,
        ),
    ]
    return targets


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mib(kib) -> str:
    return "–" if kib is None else f"{kib / 1024:.0f}"


def _level_rows(server: str, path: str, levels: list[dict]) -> list[str]:
    rows = []
    for lv in levels:
        lat = lv["latency_ok"]
        statuses = ", ".join(f"{k}: {v}" for k, v in lv["statuses"].items())
        rows.append(
            f"| {server} | {path} | {lv['concurrency']} | {lv['ok']}/{lv['requests']} | {_fmt(lat['p50_ms'])} | {_fmt(lat['p95_ms'])} "
            f"| {_fmt(lat['p99_ms'])} | {_fmt(lv['throughput_rps'])} | {_fmt(lv.get('server_cpu_ms_per_ok_request'))} "
            f"| {lv['busy_503_with_retry_after']} | {lv['errors']} ({lv['error_breakdown']['timeouts']} timeouts) | {statuses} |"
        )
    return rows


def _throughput_lines(result: dict) -> list[str]:
    alone = result["floor"].get("throughput") or []
    if not alone:
        return []
    lines = [
        "Throughput against onnxruntime alone (closed loop, c threads sharing one default-options session, "
        "decode + resize + run per request, in-process, no HTTP):",
        "",
        "| c | service /predict req/s | onnxruntime alone req/s | service ÷ alone |",
        "|---|---|---|---|",
    ]
    for level in alone:
        c = level["concurrency"]
        lines.append(
            f"| {c} | {_fmt(_rps(result['service']['predict'], c))} | {_fmt(level['throughput_rps'])} "
            f"| {_fmt(ratio(_rps(result['service']['predict'], c), level['throughput_rps']), 2)} |"
        )
    return [*lines, ""]


def render_markdown(result: dict) -> str:
    m, b, f = result["machine"], result["bundle"], result["floor"]
    service, baseline = result["service"], result.get("baseline")
    lines = [
        "# Benchmark: pneumonia-screening service vs onnxruntime floor vs Keras notebook baseline",
        "",
        "Research use only; these are engineering measurements, not clinical ones.",
        "",
        f"- Run: {result['started_at']} → {result['finished_at']} ({result['duration_s']:.0f} s){' — **quick smoke run**' if result['quick'] else ''}",
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}",
        f"- CPU idle before the run: {_fmt(m['idle_check']['busy_pct'])}% busy over {m['idle_check']['seconds']} s"
        + (f" — **contended: {m['contention_note']}; figures are not comparable**" if m.get("contended") else ""),
        f"- CPU busy during the run, all processes: {_fmt(m.get('busy_pct_during_run'))}% (the benchmark's own "
        "client, servers and floor; no other CPU-heavy process was found at the start or the end"
        + ("" if not m.get("contended") else ", except as noted above")
        + ")",
        f"- Bundle: `{b['name']}` {b['version']} ({b['backbone']}, {b['input_size'][0]}x{b['input_size'][1]}), "
        f"ONNX sha256 `{b['onnx_sha256'][:12]}…`, Keras sha256 `{b['keras_sha256'][:12]}…`, from `{b['dir']}`",
        f"- Service settings: defaults ({', '.join(f'{k}={v}' for k, v in result['service_settings'].items())}), 1 uvicorn worker; "
        "baseline: 1 uvicorn worker, TensorFlow defaults",
        f"- Client: httpx.AsyncClient, HTTP/1.1 keep-alive, one client per level with a pool of `concurrency` connections, "
        f"closed loop over {result['parameters']['images']} sample JPEGs, warm-up before every level",
        "",
        "## Targets",
        "",
        "| Target | Value | Goal | Result |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        verdict = {True: "**met**", False: "**missed**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(
            f"| {t['description']}{note} | {_fmt(t['value'], 2)} | {t['comparator']} {t['threshold']:g} | {verdict} |"
        )
    r = result["ratios"]
    lines += [
        "",
        "## Ratios",
        "",
        "| Ratio | Value |",
        "|---|---|",
        f"| service /predict p50 (c=1) ÷ floor (model + decode p50) | {_fmt(r['service_vs_floor_predict_p50_c1'], 2)} |",
        f"| baseline /predict p50 ÷ service /predict p50 (c=1): speed-up | {_fmt(r['speedup_vs_baseline_predict_p50_c1'], 1)}× |",
        f"| service /predict raw body p50 (c=1) ÷ floor | {_fmt(r.get('service_raw_body_vs_floor_predict_p50_c1'), 2)} |",
        f"| baseline /predict p50 ÷ service /predict raw body p50 (c=1): speed-up | {_fmt(r.get('speedup_vs_baseline_predict_raw_body_p50_c1'), 1)}× |",
        f"| baseline /explain p50 ÷ service /explain p50 (c=1): speed-up | {_fmt(r['speedup_vs_baseline_explain_p50_c1'], 1)}× |",
        f"| service /predict p95 (c=1) ÷ floor | {_fmt(r.get('service_vs_floor_predict_p95_c1'), 2)} |",
        f"| service ÷ baseline /predict throughput at c=4 | {_fmt(r['speedup_vs_baseline_predict_throughput_c4'], 1)}× |",
        f"| service /explain p50 ÷ /predict p50 (c=1) | {_fmt(r['service_explain_over_predict_p50_c1'], 2)} |",
        f"| service RSS growth over the load phase | {_fmt(r['service_memory_growth_pct'], 2)} % |",
        "",
        "## Floor (in-process, no server)",
        "",
        "| Step | p50 ms | p95 ms | n |",
        "|---|---|---|---|",
        f"| onnxruntime `session.run`, batch 1, preprocessed tensor ({f['onnx_session_options']['threads']}; "
        f"outputs {', '.join(f.get('onnx_outputs', ['probability']))}) "
        f"| {_fmt(f['model_session_run']['p50_ms'], 2)} | {_fmt(f['model_session_run']['p95_ms'], 2)} | {f['model_session_run']['n']} |",
        f"| `decode_image` + `to_model_input` on the sample JPEG bytes | {_fmt(f['decode_preprocess']['p50_ms'], 2)} "
        f"| {_fmt(f['decode_preprocess']['p95_ms'], 2)} | {f['decode_preprocess']['n']} |",
        f"| model + decode (sum of p50s) | {_fmt(f['model_plus_decode_p50_ms'], 2)} | | |",
        "",
        *_throughput_lines(result),
        "## HTTP latency and throughput (loopback)",
        "",
        "Latency percentiles are over HTTP 200 responses; throughput is HTTP 200 responses per second of wall time; "
        "server CPU is the server process's user+system CPU time per HTTP 200 response; 503 = back-pressure (503 with Retry-After), "
        "not an error; errors = any other non-200, 503 without Retry-After, timeouts, broken connections.",
        "",
        *(
            [
                f"Round trip of the same client to the service without an upload or a model (GET {service['round_trip']['path']}, c=1): "
                f"p50 {_fmt(service['round_trip']['p50_ms'], 2)} ms, p95 {_fmt(service['round_trip']['p95_ms'], 2)} ms: loopback HTTP, "
                "uvicorn and the httpx client, included in every /predict latency below and in none of the floor.",
                "",
            ]
            if service.get("round_trip")
            else []
        ),
        "| Server | Route | c | 200/sent | p50 ms | p95 ms | p99 ms | req/s | server CPU ms/req | 503 | errors | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += _level_rows("service", "/predict", service["predict"])
    lines += _level_rows("service", "/predict (raw body)", service.get("predict_raw_body", []))
    lines += _level_rows("service", "/explain", service["explain"])
    if service.get("overload"):
        lines += _level_rows("service (over limit)", "/predict", [service["overload"]])
    if baseline:
        lines += _level_rows("baseline", "/predict", baseline["predict"])
        lines += _level_rows("baseline", "/explain", baseline["explain"])
    mem = service["memory"]
    lines += [
        "",
        "## Memory (VmRSS / VmHWM from /proc, MiB)",
        "",
        "| Server | after start-up | after warm-up | after load phase | at the end | peak (VmHWM) | start-up s |",
        "|---|---|---|---|---|---|---|",
        f"| service | {_mib(mem.get('rss_after_startup_kib'))} | {_mib(mem.get('rss_after_warmup_kib'))} "
        f"| {_mib(mem.get('rss_after_load_kib'))} ({mem.get('load_requests')} × /predict at c={mem.get('load_concurrency')}) "
        f"| {_mib(mem.get('rss_end_kib'))} | {_mib(mem.get('hwm_end_kib'))} | {_fmt(service.get('startup_s'))} |",
    ]
    if baseline:
        bm = baseline["memory"]
        lines.append(
            f"| baseline | {_mib(bm.get('rss_after_startup_kib'))} | {_mib(bm.get('rss_after_warmup_kib'))} | – "
            f"| {_mib(bm.get('rss_end_kib'))} | {_mib(bm.get('hwm_end_kib'))} | {_fmt(baseline.get('startup_s'))} |"
        )
    samples = mem.get("rss_samples_kib") or []
    if samples:
        lines += [
            "",
            "Service RSS during the load phase (requests: MiB): "
            + ", ".join(f"{n}: {kib / 1024:.0f}" for n, kib in samples),
        ]
    score = result.get("score")
    if score:
        lines += [
            "",
            "## Folder scoring (`python -m app.score`)",
            "",
            f"{score['files']} JPEG files ({score['not_answered']} not answered): {_fmt(score['images_per_s'])} images/s "
            f"over {_fmt(score['scoring_s'])} s of scoring ({_fmt(score['wall_s_with_startup'])} s with the model's start-up).",
        ]
    lines += ["", f"Reproduce: `{result['command']}`", ""]
    return "\n".join(lines)
