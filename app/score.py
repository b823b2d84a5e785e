"""Score a folder of chest X-rays in-process: `python -m app.score DIR --out scores.csv`.

The service's own path without HTTP: `load_service` (bundle verification and self-test), `decode_image`, the
input check, ONNX model and the bundle's operating points (the check as under `warn`: a refused image keeps its
probability and says why it was refused). Every JPEG, PNG and DICOM file under DIR (recursively) gets one CSV row; a file that
cannot be used gets its error code (the one /predict would answer with) and the run goes on.

Resumable: each row is written and flushed as soon as it is known, and a re-run skips every path already in
the CSV (a partial last line left by a kill is dropped and redone). Every core: one worker thread per core
decodes a batch of files and runs it through onnxruntime (which releases the GIL), batches written in order.
RESEARCH USE ONLY: the probabilities are not a diagnosis.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app.bundle import RESEARCH_DISCLAIMER, BundleError, OperatingPoint
from app.config import Settings
from app.imaging import (
    DICOM_MAGIC,
    DICOM_MAGIC_OFFSET,
    DecodedImage,
    ImageInputError,
    decode_image,
)
from app.service import ModelService, load_service

COLUMNS = (
    "path", "probability", "label", "operating_point", "threshold", "input_check_accepted", "input_check_reasons",
    "error_code", "error_message",
)  # fmt: skip
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom"})
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class Decoded:
    path: str  # relative to the scored folder, POSIX separators: the resume key
    image: DecodedImage | None = None
    error_code: str = ""
    error_message: str = ""


# --- which files ------------------------------------------------------------------------------------------------
def _is_extensionless_dicom(path: Path) -> bool:
    """DICOM archives often name files without an extension; those are recognised by their magic bytes."""
    if path.suffix:
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(len(DICOM_MAGIC)) == DICOM_MAGIC
    except OSError:
        return False


def find_images(root: Path) -> list[str]:
    """Relative POSIX paths of every JPEG/PNG/DICOM file under root, sorted (a stable order for resuming)."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.suffix.lower() in EXTENSIONS or _is_extensionless_dicom(path):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


# --- resumable output -------------------------------------------------------------------------------------------
def finished_paths(out: Path) -> set[str]:
    """Paths already in the CSV. A last line without its newline (the run was killed mid-write) is cut off."""
    if not out.is_file() or out.stat().st_size == 0:
        return set()
    with out.open(encoding="utf-8", newline="") as handle:
        text = handle.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        with out.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    rows = csv.DictReader(io.StringIO(text, newline=""))
    if rows.fieldnames is not None and tuple(rows.fieldnames) != COLUMNS:
        raise SystemExit(f"{out} is not a scores CSV of this tool (columns {rows.fieldnames}); choose another --out")
    return {row["path"] for row in rows}


class RowWriter:
    def __init__(self, out: Path):
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.is_file() or out.stat().st_size == 0
        self._file = out.open("a", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: dict[str, str]) -> None:
        self._writer.writerow(row)
        self._file.flush()  # a kill loses at most the row being written

    def close(self) -> None:
        self._file.close()


# --- the work ---------------------------------------------------------------------------------------------------
def decode_file(root: Path, relative: str, settings: Settings) -> Decoded:
    """Read and decode one file exactly as /predict decodes an upload; never raises."""
    path = root / relative
    try:
        if path.stat().st_size > settings.max_upload_bytes:
            return Decoded(relative, error_code="upload_too_large",
                           error_message=f"The file exceeds the upload limit of {settings.max_upload_bytes:,} bytes.")  # fmt: skip
        image = decode_image(path.read_bytes(), max_pixels=settings.max_pixels)
        return Decoded(relative, image=image)
    except ImageInputError as exc:
        return Decoded(relative, error_code=exc.code, error_message=exc.message)
    except OSError as exc:
        return Decoded(
            relative, error_code="unreadable_file", error_message=f"{type(exc).__name__}: {exc.strerror or exc}"
        )
    except Exception as exc:  # a decoder bug must not stop an archive run; the row says what happened
        return Decoded(relative, error_code="unexpected_error", error_message=f"{type(exc).__name__}: {exc}")


def batched(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_batch(
    service: ModelService, batch: list[Decoded], threshold: float, point: str
) -> list[tuple[dict[str, str], float | None]]:
    """One (CSV row, probability) per item, each through the service's own input check and ONNX run.

    The check runs as under `warn`: a refused image still gets its probability, with accepted=false and the
    reasons, so one pass over an archive says both what the model thinks and whether to believe it.
    """
    scored: list[tuple[dict[str, str], float | None]] = []
    for item in batch:
        row = dict.fromkeys(COLUMNS, "")
        row.update(path=item.path, error_code=item.error_code, error_message=item.error_message)
        probability = None
        if item.image is not None:
            assessed = service.assess(item.image, "warn")
            probability, check = assessed.probability, assessed.check
            row.update(
                probability=str(probability), label="PNEUMONIA" if probability >= threshold else "NORMAL",
                operating_point=point, threshold=str(threshold),
                input_check_accepted=str(check.accepted).lower(), input_check_reasons=" | ".join(check.reasons),
            )  # fmt: skip
        scored.append((row, probability))
    return scored


Scored = list[tuple[Decoded, dict[str, str], float | None]]


def process_chunk(
    service: ModelService, root: Path, chunk: list[str], settings: Settings, point: OperatingPoint
) -> Scored:
    batch = [decode_file(root, path, settings) for path in chunk]
    scored = score_batch(service, batch, point.threshold, point.name)
    return [(item, row, probability) for item, (row, probability) in zip(batch, scored, strict=True)]


def scored_chunks(
    pool: ThreadPoolExecutor,
    workers: int,
    chunks: Iterable[list[str]],
    service: ModelService,
    root: Path,
    settings: Settings,
    point: OperatingPoint,
) -> Iterator[Scored]:
    """Chunks in order, up to `workers` + 1 in flight. Each worker decodes its chunk and runs it through onnxruntime
    with one intra-op thread: N workers keep N cores busy without onnxruntime's threads spinning against each
    other (measured on the shared 2-core machine: 2 intra-op threads for one session ran at ~2/3 the speed of 1)."""
    pending: deque[Future[Scored]] = deque()
    for chunk in chunks:
        pending.append(pool.submit(process_chunk, service, root, chunk, settings, point))
        if len(pending) > workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def write_overlay(service: ModelService, item: Decoded, probability: float, threshold: float, overlays: Path) -> None:
    """The overlay GET /explain/{id} would return, for the class predicted at this run's threshold."""
    from app.explain.explainer import ExplainRequest

    assert item.image is not None
    result = service._explain_image_sync(item.image, probability, ExplainRequest(threshold=threshold))
    target = overlays / f"{item.path}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(result.png)


class Progress:
    """A one-line progress report on stderr: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, total: int, skipped: int):
        self.total, self.done, self.errors = total, 0, 0
        self.started = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()
        if skipped:
            print(f"resuming: {skipped} files already scored", file=sys.stderr)

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)

    def update(self, rows: Iterable[dict[str, str]]) -> None:
        rows = list(rows)
        self.done += len(rows)
        self.errors += sum(1 for r in rows if r["error_code"])
        now = time.perf_counter()
        if self.tty or now - self.last >= PROGRESS_EVERY_S or self.done == self.total:
            self.last = now
            line = f"{self.done}/{self.total} files, {self.errors} errors, {self.rate:.1f} images/s"
            print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def finish(self, out: Path) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"{chr(10) if self.tty else ''}scored {self.done} files ({self.errors} errors) in {elapsed:.1f} s, "
              f"{self.rate:.1f} images/s -> {out}", file=sys.stderr)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: {root} is not a directory", file=sys.stderr)
        return 2
    overrides = {
        "explain_enabled": args.overlays is not None,
        **({"model_dir": args.model_dir} if args.model_dir else {}),
    }
    settings = Settings(**overrides)
    try:
        service = load_service(settings)  # no Grad-CAM (TensorFlow) unless overlays are asked for
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [p.name for p in service.metadata.operating_points]
    if args.operating_point is not None and args.operating_point not in names:
        print(f"error: unknown operating point {args.operating_point!r}; valid: {', '.join(names)}", file=sys.stderr)
        return 2
    if args.overlays is not None and not service.explain_available:
        print(f"error: --overlays: {service.explain_unavailable_reason}", file=sys.stderr)
        return 2
    point = service.metadata.operating_point(args.operating_point)
    out = Path(args.out)
    done = finished_paths(out)
    todo = [p for p in find_images(root) if p not in done]
    print(RESEARCH_DISCLAIMER, file=sys.stderr)
    progress = Progress(len(todo), skipped=len(done))
    writer = RowWriter(out)
    try:
        with ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="score") as pool:
            chunks = batched(todo, args.batch_size)
            for scored in scored_chunks(pool, args.threads, chunks, service, root, settings, point):
                for item, row, probability in scored:
                    if args.overlays is not None and probability is not None:
                        write_overlay(service, item, probability, point.threshold, Path(args.overlays))
                    writer.write(row)
                progress.update(row for _, row, _ in scored)
    finally:
        writer.close()
    progress.finish(out)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.score",
        description="Score every JPEG/PNG/DICOM under DIR with the service's model, in-process. RESEARCH USE ONLY.",
    )
    parser.add_argument("dir", help="folder to score (recursively)")
    parser.add_argument("--out", required=True, help="CSV to write; rows already in it are skipped (resume)")
    parser.add_argument("--operating-point", help="named operating point of the bundle (default: its default)")
    parser.add_argument("--overlays", help="also write a Grad-CAM overlay PNG per image into this folder (slow)")
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
