"""bench/report.py: issue 24's targets (latency against the default-threads floor, absolute throughput, no
errors at c=16) are judged from the measured figures, and the report shows onnxruntime alone beside them."""

from __future__ import annotations

import pytest

from bench.report import REFERENCE_C4_RPS, compute_ratios, evaluate_targets, render_markdown

pytestmark = pytest.mark.fast


def level(concurrency: int, p50: float, rps: float, errors: int = 0) -> dict:
    return {
        "path": "/predict", "concurrency": concurrency, "requests": 100, "ok": 100 - errors, "wall_s": 1.0,
        "throughput_rps": rps, "latency_ok": {"n": 100, "p50_ms": p50, "p95_ms": p50 * 1.2, "p99_ms": p50 * 1.3},
        "statuses": {"200": 100 - errors}, "busy_503_with_retry_after": 0, "errors": errors,
        "error_breakdown": {"other_status": {}, "503_without_retry_after": 0, "timeouts": 0, "transport_errors": errors},
    }  # fmt: skip


def result(c1_p50: float, c4_rps: float, c16_errors: int) -> dict:
    predict = [level(1, c1_p50, 180.0), level(4, 20.0, c4_rps), level(16, 80.0, 190.0, c16_errors)]
    out = {
        "started_at": "t0", "finished_at": "t1", "duration_s": 10.0, "quick": False, "command": "python -m bench",
        "machine": {"cpu_model": "cpu", "logical_cpus": 2, "usable_cpus": 2, "loadavg_start": [0.1], "loadavg_end": [1.0],
                    "idle_check": {"seconds": 5, "busy_pct": 0.5}, "contended": False, "busy_pct_during_run": 88.0},
        "bundle": {"name": "m", "version": "1", "backbone": "b", "input_size": [192, 192], "onnx_sha256": "a" * 64,
                   "keras_sha256": "b" * 64, "dir": "models/default"},
        "service_settings": {"max_concurrency": 4}, "parameters": {"images": 6},
        "floor": {"onnx_session_options": {"threads": "onnxruntime defaults"}, "onnx_outputs": ["probability"],
                  "model_session_run": {"p50_ms": 2.6, "p95_ms": 2.8, "n": 10},
                  "decode_preprocess": {"p50_ms": 1.0, "p95_ms": 1.1, "n": 10}, "model_plus_decode_p50_ms": 3.6,
                  "throughput": [{"concurrency": c, "requests": 100, "throughput_rps": 250.0} for c in (1, 4, 16)]},
        "service": {"predict": predict, "explain": [level(1, 20.0, 50.0)], "memory": {}},
        "baseline": {"predict": [level(1, 60.0, 16.0)], "explain": [level(1, 400.0, 2.5)], "memory": {}},
        "score": {"files": 600, "not_answered": 0, "scoring_s": 3.0, "images_per_s": 200.0, "wall_s_with_startup": 9.0},
    }  # fmt: skip
    out["ratios"] = compute_ratios(out)
    out["targets"] = evaluate_targets(out)
    return out


def verdicts(measured: dict) -> dict[str, bool | None]:
    return {t["id"]: t["met"] for t in measured["targets"]}


def test_targets_read_latency_against_the_floor_and_absolute_throughput():
    good = verdicts(result(c1_p50=5.0, c4_rps=REFERENCE_C4_RPS + 1, c16_errors=0))
    assert good["predict_vs_floor"] is True  # 5.0 / 3.6 = 1.39
    assert good["predict_vs_baseline"] is True  # 60 / 5 = 12
    assert good["throughput_c4"] is True and good["no_errors_c16"] is True
    bad = verdicts(result(c1_p50=6.5, c4_rps=REFERENCE_C4_RPS - 1, c16_errors=2))
    assert bad["predict_vs_floor"] is False and bad["predict_vs_baseline"] is False
    assert bad["throughput_c4"] is False and bad["no_errors_c16"] is False


def test_the_report_sets_the_service_beside_onnxruntime_alone_and_app_score():
    measured = result(c1_p50=5.0, c4_rps=200.0, c16_errors=0)
    assert measured["ratios"]["service_vs_onnxruntime_alone_throughput_c4"] == 0.8
    text = render_markdown(measured)
    assert "| 4 | 200.0 | 250.0 | 0.80 |" in text
    assert "600 JPEG files (0 not answered): 200.0 images/s" in text
    assert "CPU busy during the run, all processes: 88.0%" in text
