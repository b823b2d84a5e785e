"""`python -m app.score DIR --out scores.csv`: score a folder in-process with the service's settings.

The command line over `pneumonia.batch` (which see): the bundle, the operating point, the input-check policy
and the size limits come from the same `PNEUMONIA_*` settings as the service, so a CSV row says what
`POST /predict` would have answered for that file. RESEARCH USE ONLY: the probabilities are not a diagnosis.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.audit import AuditLog, batch_row_hook, new_run_id
from app.config import Settings
from pneumonia.batch import BatchOptions, score_folder
from pneumonia.bundle import RESEARCH_DISCLAIMER, BundleError
from pneumonia.errors import PneumoniaError
from pneumonia.input_check import POLICIES
from pneumonia.labels import resolve_decision
from pneumonia.model import Model


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: {root} is not a directory", file=sys.stderr)
        return 2
    settings = Settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    try:  # one intra-op thread per worker: the workers are the parallelism (pneumonia.batch.scored_chunks)
        model = Model.load(settings.model_dir, explain=args.overlays is not None, onnx_threads=1,
                           tf_threads=(settings.tf_intra_op_threads, settings.tf_inter_op_threads),
                           self_test_tolerance=settings.self_test_tolerance, max_pixels=settings.max_pixels)  # fmt: skip
        resolve_decision(model.metadata, args.operating_point)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PneumoniaError as exc:  # an unknown operating point
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.overlays is not None and not model.explain_available:
        print(f"error: --overlays: {model.explain_unavailable_reason}", file=sys.stderr)
        return 2
    options = BatchOptions(
        operating_point=args.operating_point,
        policy=args.input_check or settings.input_check,
        batch_size=args.batch_size,
        workers=args.threads,
        max_file_bytes=settings.max_upload_bytes,
        overlays=Path(args.overlays) if args.overlays else None,
    )
    print(RESEARCH_DISCLAIMER, file=sys.stderr)
    audit = AuditLog.open(settings.audit_log)  # one line per file when PNEUMONIA_AUDIT_LOG is set, as the service
    run_id = new_run_id("score")  # the request_id of this run's audit lines
    if audit is not None:
        print(f"audit trail: {audit.path}, request_id {run_id}", file=sys.stderr)
    try:
        on_row = batch_row_hook(audit, root, run_id=run_id) if audit else None
        score_folder(model, root, Path(args.out), options, on_row=on_row)
    except ValueError as exc:  # --out is some other CSV
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if audit is not None:
            audit.close()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.score",
        description="Score every JPEG/PNG/DICOM under DIR with the service's model, in-process. RESEARCH USE ONLY.",
    )
    parser.add_argument("dir", help="folder to score (recursively)")
    parser.add_argument("--out", required=True, help="CSV to write; rows already in it are skipped (resume)")
    parser.add_argument("--operating-point", help="named operating point of the bundle (default: its default)")
    parser.add_argument("--input-check", choices=POLICIES,
                        help="refuse (no answer for a refused file), warn or off (default: PNEUMONIA_INPUT_CHECK, refuse)")  # fmt: skip
    parser.add_argument("--overlays", help="also write an explanation overlay PNG per answered image here (slow)")
    parser.add_argument("--model-dir", help="bundle directory (default: PNEUMONIA_MODEL_DIR or models/default)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per onnxruntime run (default 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="workers, each decoding a batch and running it through onnxruntime (default: all cores)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.threads < 1:
        parser.error("--batch-size and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
