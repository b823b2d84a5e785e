"""A bundle derived from another one (`adapt`, `calibrate`): the source verified and never touched, the new one
staged next to its target, model.keras changed, model.onnx converted again and parity-checked, and moved into
place only when all of it succeeded (training/staging.py), so a failure leaves no debris."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.bundle import (
    KERAS_FILENAME,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    BundleError,
    BundleMetadata,
    FileChecksums,
    read_metadata,
    sha256_file,
    verify_file,
)
from training.errors import TrainingError


@dataclass(frozen=True)
class SourceBundle:
    path: Path
    metadata: BundleMetadata
    keras_path: Path


@dataclass(frozen=True)
class DerivedModels:
    """What `derive_bundle` hands to the metadata update: the new files' names, checksums and parity."""

    staging: Path
    update: dict[str, Any]  # onnx_input_name, onnx_output_name, explain_activation, checksums
    parity: float  # largest |P_onnx - P_keras| on the parity images


def read_source(bundle_dir: Path, out_dir: Path, error: type[TrainingError]) -> SourceBundle:
    """The source bundle with both model files verified; `error` when it is invalid or `out_dir` is the source."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if out_dir.resolve() == bundle_dir.resolve():
        raise error("--out must differ from --bundle: the source bundle is never modified")
    try:
        metadata = read_metadata(bundle_dir)
        verify_file(bundle_dir, ONNX_FILENAME, metadata.checksums.onnx_sha256)
        keras_path = verify_file(bundle_dir, KERAS_FILENAME, metadata.checksums.keras_sha256)
    except BundleError as exc:
        raise error(f"invalid source bundle: {exc}") from exc
    return SourceBundle(bundle_dir, metadata, keras_path)


def derive_bundle(
    source: SourceBundle,
    out_dir: Path,
    change: Callable[[Any], None],
    parity_images: np.ndarray,
    metadata: Callable[[DerivedModels, Any], BundleMetadata],
    parity_tolerance: float = PARITY_TOLERANCE,
) -> Path:
    """Write `out_dir`: the source's other files, model.keras after `change(model)`, model.onnx converted from it
    in the source's served form and parity-checked on `parity_images` ((N, H, W, 3) model inputs), and the
    metadata (and card) `metadata(derived, keras_model)` returns."""
    import keras

    from training.onnx_export import PARITY_IMAGES, convert_to_onnx, parity_check, served_model
    from training.staging import staged_bundle, write_bundle_metadata

    keep = lambda name: name not in (ONNX_FILENAME, KERAS_FILENAME)  # noqa: E731 - both are rewritten
    with staged_bundle(Path(out_dir), source.path, keep=keep) as staging:
        model = keras.models.load_model(source.keras_path, compile=False)
        change(model)
        model.save(staging / KERAS_FILENAME)
        # the source's served form: a schema-1 source has neither the statistics nor the activation outputs
        served, explain_activation = served_model(model) if source.metadata.input_check else (model, None)
        input_name, output_name = convert_to_onnx(served, source.metadata.input_size[0], staging / ONNX_FILENAME)
        difference = parity_check(staging / ONNX_FILENAME, model, parity_images[:PARITY_IMAGES], parity_tolerance)
        update = {
            "onnx_input_name": input_name,
            "onnx_output_name": output_name,
            "explain_activation": explain_activation,
            "checksums": FileChecksums(
                onnx_sha256=sha256_file(staging / ONNX_FILENAME), keras_sha256=sha256_file(staging / KERAS_FILENAME)
            ),
        }
        write_bundle_metadata(staging, metadata(DerivedModels(staging, update, difference), model))
    return Path(out_dir)
