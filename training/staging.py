"""Write a bundle into a staging directory and move it into place only when all of it succeeded.

A failed export, retrofit, adaptation or calibration therefore never leaves a half-written bundle behind (or destroys
the old one). The metadata is always written with the model card generated from it, so the two cannot disagree.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumonia.bundle import MODEL_CARD_FILENAME, BundleMetadata, write_metadata
from training.model_card import model_card


@contextmanager
def staged_bundle(
    out_dir: Path, source: Path | None = None, keep: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """A staging directory next to `out_dir` (empty, or holding `source`'s files for which `keep(name)`),
    moved into place only if the block completes: a failure leaves no debris and the old bundle intact."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if source is not None:
        for path in source.iterdir():
            if path.is_file() and (keep is None or keep(path.name)):
                shutil.copy2(path, staging / path.name)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, out_dir)


def write_bundle_metadata(staging: Path, metadata: BundleMetadata) -> BundleMetadata:
    """Validate (model_copy does not), then write metadata.json and the card generated from it."""
    metadata = BundleMetadata.model_validate(metadata.model_dump())
    write_metadata(staging, metadata)
    (staging / MODEL_CARD_FILENAME).write_text(model_card(metadata))
    return metadata


def replace_directory(staging: Path, target: Path) -> None:
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
