"""`pneumonia.Model`: a bundle loaded and verified once, then `predict`, `explain` and `predict_many`.

    >>> import pneumonia
    >>> model = pneumonia.Model.load("models/default")
    >>> model.predict("tests/data/normal.jpeg").probability

Loading verifies the bundle exactly as the service does before it reports ready: the metadata against its
schema, every file against its checksum, and a self-test in which model.onnx and model.keras must agree on
probe images. The service, batch scoring and the PACS worker all score through this class, so a probability
from a notebook equals the one `POST /predict` answers for the same file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from pneumonia.bundle import (
    KERAS_FILENAME,
    ONNX_FILENAME,
    PARITY_TOLERANCE,
    RESEARCH_DISCLAIMER,
    BundleError,
    BundleMetadata,
    read_metadata,
    verify_file,
)
from pneumonia.errors import ErrorCode, PneumoniaError
from pneumonia.explain.explainer import OVERLAY_MAX_SIDE, ExplanationResult
from pneumonia.imaging import DEFAULT_MAX_PIXELS, DecodedImage, ImageInputError, decode_image, to_model_input
from pneumonia.inference import OnnxClassifier
from pneumonia.input_check import InputChecker, InputCheckResult, Policy, load_checker
from pneumonia.labels import Decision, Label, label_for, resolve_decision

log = logging.getLogger("pneumonia.model")

# What `predict` accepts: a path, the file's bytes, a PIL image, or a 2-D uint8 grayscale array.
ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray | DecodedImage


class ImageRefusedError(ImageInputError):
    """The input check refused the image under policy `refuse`; the verdict travels with the error."""

    def __init__(self, check: InputCheckResult):
        self.check = check
        super().__init__(f"{check.refusal_summary()}: " + "; ".join(check.reasons) + ".")
        self.code = check.refusal_code or ErrorCode.NOT_A_CHEST_XRAY


class ExplainUnavailableError(PneumoniaError):
    """This model was loaded without explanations (no model.keras, no TensorFlow, or disabled)."""

    code = ErrorCode.EXPLAIN_UNAVAILABLE


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    backbone: str
    sha256: str  # of model.onnx


@dataclass(frozen=True)
class Prediction:
    """One image scored: P(pneumonia), the label at the operating point, and the input check's verdict."""

    probability: float
    label: Label
    threshold: float
    operating_point: str
    input_check: InputCheckResult
    model: ModelIdentity
    warnings: tuple[str, ...]
    image: DecodedImage = field(repr=False)  # as scored: turned back upright when the check found it rotated
    disclaimer: str = RESEARCH_DISCLAIMER

    @property
    def accepted(self) -> bool:
        return self.input_check.accepted


@dataclass(frozen=True)
class Explanation:
    """A prediction and the saliency map for its predicted class."""

    prediction: Prediction
    map: np.ndarray = field(repr=False)  # (h, w) float32 in [0, 1] at the model-input resolution
    overlay_png: bytes = field(repr=False)  # the map over the image (capped size), a colour-scale strip beside it
    method: str
    layers: tuple[str, ...]
    explained_class: Label


@dataclass(frozen=True)
class ScoredItem:
    """One entry of `predict_many`: the prediction, or the error that stopped it (never both). `seconds`, when
    set (pneumonia.batch), is the wall time from the start of its batch to its result: reading, decoding, the
    input check and the batch's one ONNX run."""

    source: str
    prediction: Prediction | None = None
    error: PneumoniaError | None = None
    seconds: float | None = None


class Assessment(NamedTuple):
    """One ONNX run for one image: the image as scored, its model input, P(pneumonia), the input check's
    verdict, and (when asked for) the explanation activation of the same run."""

    image: DecodedImage
    batch: np.ndarray  # (1, H, W, 3) float32 0..255
    probability: float
    check: InputCheckResult
    activation: np.ndarray | None = None


class Model:
    """A verified bundle, ready to score. Thread-safe: onnxruntime's `run` and the explainer's lock allow
    concurrent calls. Build it with `Model.load`."""

    def __init__(
        self,
        bundle_dir: Path,
        metadata: BundleMetadata,
        classifier: OnnxClassifier,
        checker: InputChecker,
        explainer: Any | None = None,
        *,
        explain_unavailable_reason: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        observe: Callable[[str, float], None] | None = None,
    ):
        self.bundle_dir = bundle_dir
        self.metadata = metadata
        self.classifier = classifier
        self.checker = checker
        self.explainer = explainer
        self.explain_unavailable_reason = explain_unavailable_reason
        self.max_pixels = max_pixels
        # called with (kind, seconds) after every model run: 'predict' or 'explain' (the service's metrics)
        self.observe = observe or (lambda kind, seconds: None)
        self.identity = ModelIdentity(
            metadata.name, metadata.version, metadata.backbone, metadata.checksums.onnx_sha256
        )

    @classmethod
    def load(
        cls,
        bundle_dir: str | os.PathLike[str],
        *,
        explain: bool = True,
        onnx_threads: int = 0,
        tf_threads: tuple[int, int] = (0, 0),
        self_test_tolerance: float = PARITY_TOLERANCE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        observe: Callable[[str, float], None] | None = None,
    ) -> Model:
        """Read, verify and self-test a bundle directory; raises `BundleError` when it cannot be served.

        `explain=False` skips TensorFlow (about a second and several hundred MiB): predictions only.
        `onnx_threads`: onnxruntime threads of a lone run (0: every available core; overlapping runs use one).
        `tf_threads`: TensorFlow's (intra-op, inter-op) pool sizes for explanations, 0 for its default.
        `observe(kind, seconds)` is called after every model run ("predict" or "explain"), e.g. for metrics.
        """
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise BundleError(f"{bundle_dir}: model bundle directory does not exist")
        metadata = read_metadata(bundle_dir)
        onnx_path = verify_file(bundle_dir, ONNX_FILENAME, metadata.checksums.onnx_sha256)
        if (bundle_dir / KERAS_FILENAME).is_file():  # verify both checksums before the slow TensorFlow import
            verify_file(bundle_dir, KERAS_FILENAME, metadata.checksums.keras_sha256)
        classifier = OnnxClassifier(onnx_path, metadata, threads=onnx_threads)
        checker = load_checker(bundle_dir, metadata)
        if checker.model is None:
            log.warning("input check: %s", checker.unavailable_reason)
        keras_model, explainer, reason = _load_explainer(bundle_dir, metadata, explain, tf_threads)
        report = self_test(classifier, metadata, keras_model, explainer, self_test_tolerance)
        log.info("self-test passed: %s", ", ".join(f"{k}={v:.6g}" for k, v in report.items()))
        if reason and explain:  # asked for and unavailable: worth a warning (explain=False is a choice, not news)
            log.warning("serving without explanations: %s", reason)
        return cls(bundle_dir, metadata, classifier, checker, explainer, explain_unavailable_reason=reason,
                   max_pixels=max_pixels, observe=observe)  # fmt: skip

    # --- the public API ------------------------------------------------------------------------------------
    @property
    def explain_available(self) -> bool:
        return self.explainer is not None

    def decode(self, image: ImageInput) -> DecodedImage:
        """Any accepted input -> the 8-bit grayscale image the model scores (the service's one decode path)."""
        if isinstance(image, DecodedImage):
            return image
        if isinstance(image, bytes):
            return decode_image(image, max_pixels=self.max_pixels)
        if isinstance(image, str | os.PathLike):
            return decode_image(Path(image).read_bytes(), max_pixels=self.max_pixels)
        if isinstance(image, Image.Image):
            return DecodedImage(pixels=np.asarray(image.convert("L"), dtype=np.uint8), source_format="array")
        array = np.asarray(image)
        if array.ndim != 2 or array.dtype != np.uint8:
            raise TypeError(f"an array image must be 2-D uint8 grayscale, got {array.dtype} {array.shape}")
        return DecodedImage(pixels=array, source_format="array")

    def predict(
        self,
        image: ImageInput,
        *,
        operating_point: str | None = None,
        threshold: float | None = None,
        policy: Policy = "refuse",
    ) -> Prediction:
        """P(pneumonia) and the label at `operating_point` (default: the bundle's) or a custom `threshold`.

        Under `policy="refuse"` an image the input check refuses raises `ImageRefusedError` (its `.check` holds
        the verdict); under "warn" it is answered with `accepted=False`; "off" skips the check.
        """
        decision = resolve_decision(self.metadata, operating_point, threshold)
        assessed = self.decode_and_assess(image, policy)
        return self.prediction(assessed.image, assessed.probability, assessed.check, decision)

    def explain(
        self,
        image: ImageInput,
        *,
        method: str | None = None,
        operating_point: str | None = None,
        threshold: float | None = None,
        policy: Policy = "refuse",
        overlay_max_side: int | None = OVERLAY_MAX_SIDE,
    ) -> Explanation:
        """`predict`, plus the saliency map of the predicted class (`method`: default the bundle's). The overlay
        is at most `overlay_max_side` pixels on its longer side (None: the image's own size)."""
        self.require_explanations()
        decision = resolve_decision(self.metadata, operating_point, threshold)
        assessed = self.decode_and_assess(image, policy, activation=True)
        prediction = self.prediction(assessed.image, assessed.probability, assessed.check, decision)
        return self.explain_scored(prediction, assessed.batch, method, assessed.activation, overlay_max_side)

    def explain_prediction(
        self, prediction: Prediction, method: str | None = None, overlay_max_side: int | None = OVERLAY_MAX_SIDE
    ) -> Explanation:
        """The map for an earlier prediction (its image as scored and its threshold), without re-checking it."""
        self.require_explanations()
        return self.explain_scored(prediction, self._model_input(prediction.image), method, None, overlay_max_side)

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int = 16,
        operating_point: str | None = None,
        threshold: float | None = None,
        policy: Policy = "refuse",
    ) -> Iterator[ScoredItem]:
        """Score many images, `batch_size` per ONNX run, in order. A failing image yields a `ScoredItem` with
        its error (unreadable, undecodable, or refused under `refuse`) and the rest go on."""
        decision = resolve_decision(self.metadata, operating_point, threshold)
        pending: list[ScoredItem | _Checked] = []  # in input order: errors wait for the batch before them
        for source in images:
            pending.append(self._inspect_one(source, policy))
            if sum(isinstance(item, _Checked) for item in pending) == batch_size:
                yield from self._score_pending(pending, policy, decision)
                pending = []
        if pending:
            yield from self._score_pending(pending, policy, decision)

    # --- the steps, shared with the service ----------------------------------------------------------------
    def decode_and_assess(self, image: ImageInput, policy: Policy, *, activation: bool = False) -> Assessment:
        """`decode`, then `assess`, marked as one image in progress: a lone image's run may use every core,
        one that overlaps other images' decoding or checks runs on one (pneumonia.inference)."""
        with self.classifier.working():
            return self.assess(self.decode(image), policy, activation=activation)

    def assess(self, image: DecodedImage, policy: Policy, *, activation: bool = False) -> Assessment:
        """Input check and P(pneumonia) in one ONNX run. Under `refuse`, a refused image raises
        ImageRefusedError. `activation`: also fetch the explanation activation of the same run."""
        batch = self._model_input(image)
        check, scored = self.checker.inspect(image, batch[0, :, :, 0], policy)
        if scored is not image:
            image, batch = scored, self._model_input(scored)
        started = time.perf_counter()
        if activation and self.explainer is not None:
            probabilities, statistics, root_activation = self.classifier.run_with_activation(batch)
        else:
            (probabilities, statistics), root_activation = self.classifier.run(batch), None
        self.observe("predict", time.perf_counter() - started)
        self.checker.score(check, statistics)
        if policy == "refuse" and not check.accepted:
            raise ImageRefusedError(check)
        return Assessment(image, batch, float(probabilities[0]), check, root_activation)

    def prediction(
        self, image: DecodedImage, probability: float, check: InputCheckResult, decision: Decision
    ) -> Prediction:
        """The Prediction for a scored image (as scored) at `decision`: the label rule, warnings, identity."""
        return Prediction(
            probability=probability,
            label=label_for(probability, decision.threshold),
            threshold=decision.threshold,
            operating_point=decision.operating_point,
            input_check=check,
            model=self.identity,
            warnings=tuple(self._warnings(image, check)),
            image=image,
        )

    def require_explanations(self) -> None:
        if self.explainer is None:
            raise ExplainUnavailableError(self.explain_unavailable_reason or "Explanations are not available.")

    def _model_input(self, image: DecodedImage) -> np.ndarray:
        return to_model_input(image, self.metadata.input_size)[None]  # (1, H, W, 3) float32 0..255

    def _warnings(self, image: DecodedImage, check: InputCheckResult) -> list[str]:
        warnings = list(image.warnings)
        height, width = self.metadata.input_size
        if image.height < height or image.width < width:
            warnings.append(
                f"The image ({image.width}x{image.height}) is smaller than the model input ({width}x{height}) "
                "and was upscaled; the result may be unreliable."
            )
        # Under `warn` a refused image is answered; its reasons must be as visible as any other warning.
        # Rotated/mirrored notes are always surfaced: the label is for the image turned back.
        if not check.accepted or check.rotated_back_degrees or check.mirrored:
            warnings += [f"Input check: {reason}" for reason in check.reasons]
        return warnings

    def explain_scored(
        self,
        prediction: Prediction,
        batch: np.ndarray,
        method: str | None,
        activation: np.ndarray | None,
        overlay_max_side: int | None = OVERLAY_MAX_SIDE,
    ) -> Explanation:
        """The map for the predicted class (NORMAL: the evidence for NORMAL)."""
        if self.explainer is None:
            raise ExplainUnavailableError(self.explain_unavailable_reason or "Explanations are not available.")
        started = time.perf_counter()
        result: ExplanationResult = self.explainer.explain(
            prediction.image.pixels, batch, prediction.label, method, activation=activation,
            overlay_max_side=overlay_max_side,
        )  # fmt: skip
        self.observe("explain", time.perf_counter() - started)
        return Explanation(prediction, result.values, result.png, result.method, result.layers, prediction.label)

    def _inspect_one(self, source: ImageInput, policy: Policy) -> ScoredItem | _Checked:
        name = str(source) if isinstance(source, str | os.PathLike) else f"<{type(source).__name__}>"
        try:
            decoded = self.decode(source)
            model_input = self._model_input(decoded)[0]
            check, scored = self.checker.inspect(decoded, model_input[:, :, 0], policy)
        except OSError as exc:
            return ScoredItem(name, error=UnreadableFileError(f"{type(exc).__name__}: {exc.strerror or exc}"))
        except PneumoniaError as exc:
            return ScoredItem(name, error=exc)
        if scored is not decoded:  # turned back upright: resized again, as `assess` does
            model_input = self._model_input(scored)[0]
        return _Checked(name, scored, check, model_input)

    def _score_pending(
        self, pending: list[ScoredItem | _Checked], policy: Policy, decision: Decision
    ) -> Iterator[ScoredItem]:
        checked = [item for item in pending if isinstance(item, _Checked)]
        probabilities: np.ndarray = np.empty(0)
        statistics: list[np.ndarray] = []
        if checked:
            started = time.perf_counter()
            probabilities, statistics = self.classifier.run(np.stack([item.model_input for item in checked]))
            self.observe("predict", time.perf_counter() - started)
        index = 0
        for item in pending:
            if isinstance(item, ScoredItem):
                yield item
                continue
            self.checker.score(item.check, [s[index : index + 1] for s in statistics])
            probability = float(probabilities[index])
            index += 1
            if policy == "refuse" and not item.check.accepted:
                yield ScoredItem(item.source, error=ImageRefusedError(item.check))
            else:
                yield ScoredItem(item.source, prediction=self.prediction(item.image, probability, item.check, decision))


class _Checked(NamedTuple):
    """An image of `predict_many` that passed decoding and the pixel checks, waiting for its batch's ONNX run."""

    source: str
    image: DecodedImage
    check: InputCheckResult
    model_input: np.ndarray  # (H, W, 3)


class UnreadableFileError(PneumoniaError):
    code = ErrorCode.UNREADABLE_FILE


# --- loading -------------------------------------------------------------------------------------------------
def import_tensorflow_quietly() -> None:
    """Import TensorFlow, keeping its C++ start-up lines (oneDNN's notice, absl's "before InitializeLog") off
    stderr when TF_CPP_MIN_LOG_LEVEL asks for quiet (2 or 3): they are written before TensorFlow reads it.
    A failed import still raises; only the file descriptor's output during the import is dropped."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("2", "3"):
        import tensorflow

        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def limit_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools (0: its default). Possible only before TensorFlow runs its first op."""
    if not (intra_op or inter_op):
        return
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # TensorFlow already ran in this process (an embedding application, a test session)
        log.warning("TensorFlow is already initialised; its thread settings are left as they are")


# Why a model loaded with explain=False answers no explanations (a service that loads it so adds its own setting)
EXPLAIN_OFF = "Explanations are off: the model was loaded with explain=False."


def _load_explainer(
    bundle_dir: Path, metadata: BundleMetadata, enabled: bool, tf_threads: tuple[int, int]
) -> tuple[Any, Any, str | None]:
    """Return (keras_model, Explainer, None) or (None, None, reason) when explanations are unavailable.

    A missing model.keras or an unimportable TensorFlow degrades to no explanations; a model.keras that is
    present but fails its checksum, does not load or lacks the named layers is a broken bundle (BundleError).
    """
    if not enabled:
        return None, None, EXPLAIN_OFF
    if not (bundle_dir / KERAS_FILENAME).is_file():
        return None, None, f"This model bundle has no {KERAS_FILENAME}, so Grad-CAM explanations are unavailable."
    keras_path = verify_file(bundle_dir, KERAS_FILENAME, metadata.checksums.keras_sha256)
    try:
        import_tensorflow_quietly()
        import keras

        from pneumonia.explain import Explainer
    except ImportError as exc:
        log.warning("TensorFlow/Keras cannot be imported (%s); explanations are disabled", exc)
        return None, None, "Grad-CAM explanations are unavailable: TensorFlow is not installed in this deployment."
    limit_tensorflow_threads(*tf_threads)
    try:
        model = keras.models.load_model(keras_path, compile=False)  # safe_mode stays on
    except Exception as exc:  # Keras raises many types for unreadable archives
        raise BundleError(f"{keras_path}: Keras cannot load the model ({exc})") from exc
    try:
        root = metadata.explain_activation.layer if metadata.explain_activation else None
        explainer = Explainer(model, metadata.gradcam_layer, metadata.logit_layer, root=root)
    except ValueError as exc:
        raise BundleError(f"{keras_path}: {exc}") from exc
    return model, explainer, None


def probe_image(size: int = 256) -> np.ndarray:
    """A deterministic synthetic chest-X-ray-like probe (uint8 gradient with two dark 'lungs')."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = 60 + 120 * yy + 40 * np.sin(6 * xx)
    for cx in (0.3, 0.7):
        image -= 70 * np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


def probe_batch(size: tuple[int, int]) -> np.ndarray:
    """(4, H, W, 3): the synthetic probe, its negative, a flat gray and a left-right ramp. Different enough that
    a swapped or mis-converted model cannot agree with its twin on all four (probabilities may saturate, the
    logit layer's inputs do not)."""
    probe = probe_image()
    ramp = np.tile(np.linspace(0, 255, probe.shape[1]), (probe.shape[0], 1)).astype(np.uint8)
    images = [probe, 255 - probe, np.full_like(probe, 110), ramp]
    return np.stack([to_model_input(image, size) for image in images])


def self_test(
    classifier: OnnxClassifier, metadata: BundleMetadata, keras_model: Any, explainer: Any, tolerance: float
) -> dict[str, float]:
    """ONNX and Keras must agree on four probes, and the explainer must give a finite map; else BundleError.

    Probabilities of an untrained or extreme probe saturate at 0 or 1, where two different networks can agree;
    so the check also compares the channel means of the input check's layers (ONNX statistics outputs vs the
    Keras layers), relative to their size, which never saturate.
    """
    batch = probe_batch(metadata.input_size)
    onnx_probabilities, statistics = classifier.run(batch)
    if not (np.all(np.isfinite(onnx_probabilities)) and np.all((onnx_probabilities >= 0) & (onnx_probabilities <= 1))):
        raise BundleError(f"self-test failed: ONNX model returned {onnx_probabilities!r}, not probabilities")
    report = {"onnx_probability": float(onnx_probabilities[0])}
    if keras_model is None:
        return report
    # One probe at a time through Keras: a batch of four raised the start-up memory high-water mark by ~200 MiB.
    keras_probabilities = np.concatenate(
        [
            np.asarray(keras_model(batch[i : i + 1], training=False), dtype=np.float64).reshape(-1)
            for i in range(len(batch))
        ]
    )
    difference = float(np.max(np.abs(keras_probabilities - onnx_probabilities)))
    report.update(keras_probability=float(keras_probabilities[0]), difference=difference)
    if metadata.input_check is not None:
        import keras

        taps = keras.Model(keras_model.input, [keras_model.get_layer(n).output for n in metadata.input_check.layers])
        tapped = [taps(batch[i : i + 1], training=False) for i in range(len(batch))]  # per depth: (1, h, w, C)
        for depth, onnx_stats in enumerate(statistics):
            keras_means = np.concatenate([np.asarray(t[depth], dtype=np.float64).mean(axis=(1, 2)) for t in tapped])
            onnx_means = onnx_stats[:, : keras_means.shape[1]]
            relative = float(np.max(np.abs(onnx_means - keras_means)) / (np.max(np.abs(keras_means)) + 1e-6))
            report["feature_difference"] = max(report.get("feature_difference", 0.0), relative)
    if not (difference <= tolerance and report.get("feature_difference", 0.0) <= tolerance):
        raise BundleError(
            f"self-test failed: ONNX and Keras models disagree on the probe images (max |dp| {difference:.2e}, "
            f"relative feature difference {report.get('feature_difference', 0.0):.2e}, tolerance {tolerance:g}); "
            "model.onnx and model.keras are not the same network"
        )
    if explainer is not None:
        method = explainer.method()  # the default method, traced here rather than on a first request
        heatmap = method(batch[:1])
        if heatmap.ndim != 3 or not np.all(np.isfinite(heatmap)) or heatmap.min() < 0 or heatmap.max() > 1:
            raise BundleError("self-test failed: the explanation method produced a non-finite or out-of-range map")
        if metadata.explain_activation is not None:
            report.update(_check_explain_activation(classifier, metadata.explain_activation.layer, keras_model,
                                                    method, heatmap, batch[:1], tolerance))  # fmt: skip
    return report


def _check_explain_activation(
    classifier: OnnxClassifier,
    layer: str,
    keras_model: Any,
    method: Any,
    heatmap: np.ndarray,
    batch: np.ndarray,
    tolerance: float,
) -> dict[str, float]:
    """/explain starts from model.onnx's explain_activation: it must be `layer`'s activation in model.keras,
    and the default method's map from it must be the one model.keras gives from the image."""
    import keras

    activation = classifier.run_with_activation(batch)[2]
    expected = np.asarray(keras.Model(keras_model.input, keras_model.get_layer(layer).output)(batch, training=False))
    if activation is None or activation.shape != expected.shape:
        raise BundleError(
            f"self-test failed: model.onnx's explain_activation has shape "
            f"{None if activation is None else activation.shape}, layer {layer!r} of model.keras {expected.shape}"
        )
    report = {
        "explain_activation_difference": float(
            np.max(np.abs(activation - expected)) / (np.max(np.abs(expected)) + 1e-6)
        )
    }
    if getattr(method, "accepts_activation", False):  # the baselines never do
        report["explain_activation_map_difference"] = float(
            np.max(np.abs(method.maps_from_activation(activation)[0] - heatmap))
        )
    else:
        log.warning("explanations by %s start from the image: it cannot start from layer %s", method.name, layer)
    if not max(report.values()) <= tolerance:
        raise BundleError(
            f"self-test failed: model.onnx's explain_activation and model.keras's layer {layer!r} disagree "
            f"({', '.join(f'{k} {v:.2e}' for k, v in report.items())}; tolerance {tolerance:g})"
        )
    return report


__all__ = [
    "Assessment",
    "ExplainUnavailableError",
    "Explanation",
    "ImageInput",
    "ImageRefusedError",
    "Model",
    "ModelIdentity",
    "Prediction",
    "ScoredItem",
]
