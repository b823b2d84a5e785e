"""/explain against /predict over HTTP on a running service: p50 per endpoint, same images, interleaved.

python -m bench.explain.latency --url http://127.0.0.1:8000 --images 8 --repeats 3 [--method NAME]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def timed(client: httpx.Client, path: str, data: bytes, **params) -> float:
    started = time.perf_counter()
    response = client.post(path, params=params, files={"file": ("x.jpeg", data, "image/jpeg")})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.explain.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--sample", type=Path, default=REPO_ROOT / "results" / "explanations" / "explanations.json")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "chest_xray")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", action="append", default=None, help="explain methods (default: the served one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    paths = json.loads(args.sample.read_text())["sample"]["paths"][:: max(1, 60 // args.images)][: args.images]
    images = [(args.data / p).read_bytes() for p in paths]
    methods = args.method or [None]
    times: dict[str, list[float]] = {"predict": [], **{f"explain:{m or 'default'}": [] for m in methods}}
    with httpx.Client(base_url=args.url, timeout=120) as client:
        for data in images[:1]:  # warm-up: first traces of every method
            timed(client, "/predict", data)
            for m in methods:
                timed(client, "/explain", data, **({"method": m} if m else {}))
        for _ in range(args.repeats):
            for data in images:
                times["predict"].append(timed(client, "/predict", data))
                for m in methods:
                    times[f"explain:{m or 'default'}"].append(
                        timed(client, "/explain", data, **({"method": m} if m else {}))
                    )
    p50 = {k: 1000.0 * float(np.median(v)) for k, v in times.items()}
    report = {
        "url": args.url,
        "images": len(images),
        "repeats": args.repeats,
        "p50_ms": p50,
        "ratio_to_predict": {k: v / p50["predict"] for k, v in p50.items() if k != "predict"},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
