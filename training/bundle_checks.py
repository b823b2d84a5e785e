"""The bundle's learned checks: fit the input check into a staged bundle, and bring existing bundles up to date.

`write_input_check` runs in every `export`. `add_input_check` (`input-check`) and `add_population_check`
(`population-check`) retrofit a bundle written before those checks existed: each writes a new bundle, staged, and
leaves the models it does not need to change as they are.
"""

from __future__ import annotations

from pathlib import Path

from pneumonia.bundle import (
    INPUT_CHECK_FILENAME,
    KERAS_FILENAME,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    FileChecksums,
    InputCheckSpec,
    Population,
    sha256_file,
)
from pneumonia.input_check import STATISTICS_OUTPUT_PREFIX
from training import ood, population
from training.data import decode_samples
from training.errors import ExportError
from training.onnx_export import PARITY_IMAGES, convert_to_onnx, parity_check, served_model
from training.staging import staged_bundle, write_bundle_metadata


def write_input_check(staging: Path, train: list, val: list, image_size: int, seed: int) -> InputCheckSpec:
    """Fit the input check through the staged model.onnx on the training X-rays, threshold it on validation."""
    import keras
    import onnxruntime as ort

    layer_names = ood.statistic_layers(keras.models.load_model(staging / KERAS_FILENAME, compile=False))
    size = (image_size, image_size)
    train_images = decode_samples(train, size, desc="input check: train").images[..., 0]  # (N, H, W)
    val_images = decode_samples(val, size, desc="input check: validation").images[..., 0]
    session = ort.InferenceSession(str(staging / ONNX_FILENAME), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs() if o.name.startswith(STATISTICS_OUTPUT_PREFIX)]
    fitted = ood.fit_input_check(session, layer_names, train_images, val_images, seed=seed)
    fitted.model.save(staging / INPUT_CHECK_FILENAME)
    return InputCheckSpec(
        sha256=sha256_file(staging / INPUT_CHECK_FILENAME),
        statistics_outputs=outputs,
        layers=list(fitted.model.layer_names),
        threshold=fitted.model.threshold,
        fitted_on=f"{len(train_images)} training X-rays (detector; orientation on {ood.THUMBNAIL_IMAGES} of them)",
        threshold_chosen_on=f"{len(val_images)} validation X-rays, {ood.VALIDATION_ACCEPTANCE:.1%} quantile",
        validation_acceptance=fitted.validation_acceptance,
        method=(
            f"max over {len(outputs)} depths of a Mahalanobis distance of channel mean/std features "
            f"({ood.SUBSPACE_DIMS}-dim principal subspace + residual), each normalised on validation; "
            "orientation, mirroring and polarity by logistic regression on 24x24 thumbnails"
        ),
    )


def add_input_check(
    bundle_dir: Path,
    data_dir: Path,
    split_path: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> Path:
    """Bring an existing bundle to the current served form: re-export model.onnx from model.keras with the
    statistics and explanation-activation outputs (`served_model`), fit the input check on the recorded training
    split, and write a schema-2 bundle to `out_dir` (staged, parity-checked). model.keras is not changed.
    """
    import keras

    from pneumonia.bundle import read_metadata
    from training.data import read_split

    metadata = read_metadata(bundle_dir)
    split = read_split(split_path, data_dir)
    if not split["train"] or not split["val"]:
        raise ExportError(f"{split_path}: needs training and validation rows")
    # model.onnx and the input check are rewritten; the population check reads the same statistics outputs of
    # the same model.keras, so it stays valid and is kept
    keep = lambda name: name not in (ONNX_FILENAME, INPUT_CHECK_FILENAME)  # noqa: E731
    with staged_bundle(out_dir, bundle_dir, keep=keep) as staging:
        model = keras.models.load_model(staging / KERAS_FILENAME, compile=False)
        served, explain_activation = served_model(model)
        size = metadata.input_size[0]
        input_name, output_name = convert_to_onnx(served, size, staging / ONNX_FILENAME)
        probe = decode_samples(split["val"][:PARITY_IMAGES], (size, size), desc="parity")
        difference = parity_check(staging / ONNX_FILENAME, model, probe.images, parity_tolerance)
        input_check = write_input_check(staging, split["train"], split["val"], size, seed)
        updated = metadata.model_copy(
            update={
                "schema_version": max(2, metadata.schema_version),
                "onnx_input_name": input_name,
                "onnx_output_name": output_name,
                "input_check": input_check,
                "explain_activation": explain_activation,
                "training": {**metadata.training, "parity_max_abs_diff": difference},
                "checksums": FileChecksums(
                    onnx_sha256=sha256_file(staging / ONNX_FILENAME), keras_sha256=metadata.checksums.keras_sha256
                ),
            }
        )
        write_bundle_metadata(staging, updated)
    return out_dir


def add_population_check(
    bundle_dir: Path,
    data_dir: Path,
    split_path: Path,
    adult_dir: Path,
    out_dir: Path,
    *,
    declared: Population | None = None,
    evidence_dir: Path | None = None,
) -> Path:
    """Bring a schema-2 bundle to schema 3: declare its population (`declared`, else known from its dataset's
    name), fit the population check and the image-quality range on its recorded split against the adult films,
    and write the bundle to `out_dir` (staged; the models are not changed). `evidence_dir`: also write the
    generalisation and external-test numbers there."""
    from pneumonia.bundle import read_metadata
    from training.data import read_split

    metadata = read_metadata(bundle_dir)
    if metadata.input_check is None:
        raise ExportError(f"{bundle_dir}: schema {metadata.schema_version} has no input check; run input-check first")
    declared = declared or metadata.population or population.declared_population(metadata.data.dataset)
    if declared is None:
        raise ExportError(
            f"{bundle_dir}: the population of {metadata.data.dataset!r} is not known here; give it with --population"
        )
    split = read_split(split_path, data_dir)
    if not split["train"] or not split["val"]:
        raise ExportError(f"{split_path}: needs training and validation rows")
    keep = lambda name: name != population.POPULATION_CHECK_FILENAME  # noqa: E731 - it is rewritten
    with staged_bundle(out_dir, bundle_dir, keep=keep) as staging:
        spec, quality, evidence = population.fit_population_check(
            bundle_dir, split["train"], split["val"], adult_dir, staging
        )
        updated = metadata.model_copy(
            update={
                "schema_version": 3,
                "population": declared,
                "population_check": spec,
                "image_quality": quality,
            }
        )
        write_bundle_metadata(staging, updated)
    if evidence_dir is not None:
        population.write_evidence(evidence_dir, evidence)
    return out_dir


def refit_image_quality(
    bundle_dir: Path, data_dir: Path, split_path: Path, out_dir: Path, *, evidence_dir: Path | None = None
) -> Path:
    """Re-choose a schema-3 bundle's image-quality actions, one per rule (contrast; exposure), from its validation
    films perturbed for each rule, at the range the bundle records; write the bundle to `out_dir` (staged; no model
    file changes, only metadata.json and the card). `evidence_dir`: also update the `quality` entry of the
    population.json there and re-render its README."""
    from pneumonia.bundle import read_metadata
    from training.data import read_split

    metadata = read_metadata(bundle_dir)
    split = read_split(split_path, data_dir)
    if not split["val"]:
        raise ExportError(f"{split_path}: needs validation rows")
    try:
        quality, evidence = population.refit_quality_actions(bundle_dir, split["val"])
    except population.PopulationCheckError as exc:
        raise ExportError(str(exc)) from exc
    with staged_bundle(out_dir, bundle_dir) as staging:
        write_bundle_metadata(staging, metadata.model_copy(update={"image_quality": quality}))
    if evidence_dir is not None:
        population.update_quality_evidence(evidence_dir, evidence)
    return out_dir
