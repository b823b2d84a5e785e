"""Score a folder of chest X-rays in-process, through `Model.predict_many` (the service's own path).

Every JPEG, PNG and DICOM file under the folder (recursively) gets one CSV row. The input check runs under the
same policy as the service: under `refuse` (the default) a refused file gets no probability and no label, and
the error code `/predict` would answer with (`not_a_chest_xray`, `outside_population`, ...); under `warn` it
gets both, with accepted=false and the reasons. A file that cannot be used gets its error code and the run
goes on.

Resumable: each row is written and flushed as soon as it is known, and a re-run skips every path already in
the CSV (a partial last line left by a kill is dropped and redone). One worker thread per core decodes a chunk
of files and runs it through onnxruntime (which releases the GIL); chunks are written in order.
RESEARCH USE ONLY: the probabilities are not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from pneumonia.errors import ErrorCode, PneumoniaError
from pneumonia.imaging import find_images
from pneumonia.input_check import Policy
from pneumonia.model import ImageRefusedError, Model, ScoredItem

COLUMNS = (
    "path", "probability", "label", "operating_point", "threshold", "input_check_accepted", "input_check_reasons",
    "error_code", "error_message",
)  # fmt: skip
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class BatchOptions:
    operating_point: str | None = None
    policy: Policy = "refuse"
    batch_size: int = 16
    workers: int = 1
    max_file_bytes: int | None = None  # the service's upload limit, so a file too large to upload is refused here
    overlays: Path | None = None  # also write the explanation overlay of each answered image here


class FileTooLargeError(PneumoniaError):
    """A file larger than the service would accept as an upload: refused here too, with the same code."""

    code = ErrorCode.UPLOAD_TOO_LARGE


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
        raise ValueError(f"{out} is not a scores CSV of this tool (columns {rows.fieldnames}); choose another --out")
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
def row_for(path: str, item: ScoredItem) -> dict[str, str]:
    """The CSV row of one scored file: the answer, or the refusal/error with its code, never both."""
    row = dict.fromkeys(COLUMNS, "")
    row["path"] = path
    prediction, error = item.prediction, item.error
    check = prediction.input_check if prediction else error.check if isinstance(error, ImageRefusedError) else None
    if check is not None:
        row.update(input_check_accepted=str(check.accepted).lower(), input_check_reasons=" | ".join(check.reasons))
    if prediction is not None:
        row.update(
            probability=str(prediction.probability), label=prediction.label,
            operating_point=prediction.operating_point, threshold=str(prediction.threshold),
        )  # fmt: skip
    if error is not None:
        row.update(error_code=error.code.value, error_message=error.message)
    return row


def _chunk(model: Model, root: Path, paths: list[str], options: BatchOptions) -> list[tuple[str, ScoredItem]]:
    """Score one chunk; each item's `seconds` is the time from the chunk's start to its result (the latency the
    audit trail records for it: files of one ONNX batch share most of it)."""
    started = time.perf_counter()
    sources = [root / p for p in paths]
    items: dict[str, ScoredItem] = {}
    if options.max_file_bytes is not None:
        for path, source in zip(paths, sources, strict=True):
            try:
                too_large = source.stat().st_size > options.max_file_bytes
            except OSError:
                too_large = False  # predict_many reports the unreadable file
            if too_large:
                message = f"The file exceeds the upload limit of {options.max_file_bytes:,} bytes."
                items[path] = ScoredItem(path, error=FileTooLargeError(message), seconds=time.perf_counter() - started)
    todo = [source for path, source in zip(paths, sources, strict=True) if path not in items]
    scored = model.predict_many(todo, batch_size=options.batch_size, operating_point=options.operating_point,
                                policy=options.policy)  # fmt: skip
    for path in (p for p in paths if p not in items):
        items[path] = replace(next(scored), seconds=time.perf_counter() - started)
    return [(path, items[path]) for path in paths]


def scored_chunks(
    model: Model, root: Path, paths: list[str], options: BatchOptions
) -> Iterator[list[tuple[str, ScoredItem]]]:
    """Chunks in order, up to `workers` + 1 in flight. Each worker decodes its chunk and runs it through
    onnxruntime with the model's threads: load the model with one intra-op thread per worker, so N workers keep
    N cores busy without onnxruntime's pools spinning against each other (measured on the shared 2-core machine:
    2 intra-op threads for one session ran at ~2/3 the speed of 1)."""
    chunks = [paths[i : i + options.batch_size] for i in range(0, len(paths), options.batch_size)]
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="score") as pool:
        pending: deque[Future[list[tuple[str, ScoredItem]]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_chunk, model, root, chunk, options))
            if len(pending) > options.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_overlay(model: Model, item: ScoredItem, relative: str, overlays: Path) -> None:
    """The overlay GET /explain/{id} would return, for the class predicted at this run's threshold."""
    assert item.prediction is not None
    explanation = model.explain_prediction(item.prediction)
    target = overlays / f"{relative}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(explanation.overlay_png)


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
            line = f"{self.done}/{self.total} files, {self.errors} not answered, {self.rate:.1f} images/s"
            print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def finish(self, out: Path) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"{chr(10) if self.tty else ''}scored {self.done} files ({self.errors} not answered) in {elapsed:.1f} s, "
              f"{self.rate:.1f} images/s -> {out}", file=sys.stderr)  # fmt: skip


def score_folder(
    model: Model,
    root: Path,
    out: Path,
    options: BatchOptions,
    on_row: Callable[[dict[str, str], ScoredItem], None] | None = None,
) -> int:
    """Score every image under `root` into the CSV `out` (resuming it); returns the number of files scored now.
    `on_row` sees each row and its result as it is written (e.g. an audit trail)."""
    done = finished_paths(out)
    todo = [p for p in find_images(root) if p not in done]
    progress = Progress(len(todo), skipped=len(done))
    writer = RowWriter(out)
    try:
        for chunk in scored_chunks(model, root, todo, options):
            rows = []
            for path, item in chunk:
                if options.overlays is not None and item.prediction is not None:
                    write_overlay(model, item, path, options.overlays)
                row = row_for(path, item)
                writer.write(row)
                if on_row is not None:
                    on_row(row, item)
                rows.append(row)
            progress.update(rows)
    finally:
        writer.close()
    progress.finish(out)
    return len(todo)
