"""The loaded model state: bundle metadata, ONNX classifier, optional Grad-CAM, cache, concurrency limiter.

`load_service` verifies the bundle (metadata, checksums), builds everything once and runs a self-test
before the service may report ready. Any failure raises `BundleError`; the only degraded mode is a bundle
without a usable `model.keras` (or explain disabled): /predict works, /explain answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from anyio import to_thread

from app.bundle import (
    KERAS_FILENAME,
    ONNX_FILENAME,
    BundleError,
    BundleMetadata,
    read_metadata,
    verify_file,
)
from app.cache import new_prediction_id
from app.config import Settings
from app.exceptions import ServiceError
from app.explain.explainer import ExplainRequest, ExplanationResult
from app.imaging import DecodedImage, ImageInputError, decode_image, to_model_input
from app.inference import OnnxClassifier
from app.input_check import InputChecker, InputCheckResult, Policy, load_checker
from app.store import open_store

log = logging.getLogger("app.service")


class ServiceBusyError(ServiceError):
    """More requests in flight than `max_concurrency + max_queue`."""

    status_code = 503
    code = "busy"
    headers = {"Retry-After": "1"}


class ExplainUnavailableError(ServiceError):
    """Grad-CAM is not available for this deployment."""

    status_code = 503
    code = "explain_unavailable"


class NotAChestXrayError(ImageInputError):
    """The input check refused the image (policy `refuse`): the verdict travels with the 422."""

    code = "not_a_chest_xray"
    status_code = 422

    def __init__(self, check: InputCheckResult):
        super().__init__("Not accepted as a frontal chest X-ray: " + "; ".join(check.reasons) + ".")
        self.check = check


class ConcurrencyLimiter:
    """At most `max_concurrency` holders at once and at most `max_queue` waiters; beyond that, refuse at once."""

    def __init__(self, max_concurrency: int, max_queue: int, on_reject: Callable[[], None] | None = None):
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._in_flight = 0
        self._on_reject = on_reject

    @property
    def in_flight(self) -> int:
        """Requests running or waiting."""
        return self._in_flight

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._in_flight >= self.max_concurrency + self.max_queue:
            if self._on_reject is not None:
                self._on_reject()
            raise ServiceBusyError(
                f"The service is busy ({self._in_flight} requests in progress or waiting); retry shortly."
            )
        self._in_flight += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._in_flight -= 1


class Assessment(NamedTuple):
    """What one ONNX run gives POST /predict: the image as scored, its model input, P(pneumonia), the input
    check's verdict, and (when asked for) the explanation activation of the same run."""

    image: DecodedImage
    batch: np.ndarray  # (1, H, W, 3) float32 0..255
    probability: float
    check: InputCheckResult
    activation: np.ndarray | None = None


@dataclass(frozen=True)
class Analysis:
    prediction_id: str
    image: DecodedImage
    probability: float
    input_check: InputCheckResult
    explanation: ExplanationResult | None = None


def probe_image(size: int = 256) -> np.ndarray:
    """A deterministic synthetic chest-X-ray-like probe (uint8 gradient with two dark 'lungs')."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = 60 + 120 * yy + 40 * np.sin(6 * xx)
    for cx in (0.3, 0.7):
        image -= 70 * np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


class ModelService:
    def __init__(
        self,
        settings: Settings,
        metadata: BundleMetadata,
        classifier: OnnxClassifier,
        gradcam: Any | None,
        checker: InputChecker | None = None,
        explain_unavailable_reason: str | None = None,
        observe_inference: Callable[[str, float], None] | None = None,
        on_reject: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.metadata = metadata
        self.classifier = classifier
        self.gradcam = gradcam
        self.checker = checker or InputChecker(None, "No input check was loaded.")
        self.explain_unavailable_reason = explain_unavailable_reason
        self.cache = open_store(settings)  # in memory, or Redis shared by replicas (PNEUMONIA_CACHE_URL)
        self.limiter = ConcurrencyLimiter(settings.max_concurrency, settings.max_queue, on_reject=on_reject)
        self._observe = observe_inference or (lambda kind, seconds: None)

    @property
    def explain_available(self) -> bool:
        return self.gradcam is not None

    def size_warnings(self, image: DecodedImage) -> list[str]:
        height, width = self.metadata.input_size
        if image.height < height or image.width < width:
            return [
                f"The image ({image.width}x{image.height}) is smaller than the model input ({width}x{height}) "
                "and was upscaled; the result may be unreliable."
            ]
        return []

    def _require_explanations(self) -> None:
        if self.gradcam is None:
            raise ExplainUnavailableError(self.explain_unavailable_reason or "Grad-CAM is not available.")

    # --- synchronous work (runs in worker threads) ---------------------------------------------------------
    def _model_input(self, image: DecodedImage) -> np.ndarray:
        return to_model_input(image, self.metadata.input_size)[None]  # (1, H, W, 3) float32 0..255

    def assess(self, image: DecodedImage, policy: Policy, *, activation: bool = False) -> Assessment:
        """Input check and P(pneumonia) in one ONNX run, exactly as POST /predict computes them.

        The image comes back as scored: turned back upright when the check found it rotated or mirrored.
        Under `refuse`, a refused image raises NotAChestXrayError. `activation`: also fetch the explanation
        activation of the same run (for /explain).
        """
        batch = self._model_input(image)
        check, scored = self.checker.inspect(image, batch[0, :, :, 0], policy)
        if scored is not image:
            image, batch = scored, self._model_input(scored)
        started = time.perf_counter()
        if activation:
            probabilities, statistics, root_activation = self.classifier.run_with_activation(batch)
        else:
            (probabilities, statistics), root_activation = self.classifier.run(batch), None
        self._observe("predict", time.perf_counter() - started)
        self.checker.score(check, statistics)
        if policy == "refuse" and not check.accepted:
            raise NotAChestXrayError(check)
        return Assessment(image, batch, float(probabilities[0]), check, root_activation)

    def predict_image(self, image: DecodedImage, policy: Policy = "off") -> float:
        """P(pneumonia) for a decoded image (no input check unless asked)."""
        return self.assess(image, policy).probability

    def _explain(
        self,
        image: DecodedImage,
        batch: np.ndarray,
        probability: float,
        how: ExplainRequest,
        activation: np.ndarray | None = None,
    ) -> ExplanationResult:
        """The map for the class predicted at the request's threshold (NORMAL: evidence for NORMAL)."""
        started = time.perf_counter()
        threshold = self.metadata.operating_point().threshold if how.threshold is None else how.threshold
        explained_class = "PNEUMONIA" if probability >= threshold else "NORMAL"
        if self.gradcam is None:  # analyse() and explain_cached() check first; this keeps the type honest
            raise ExplainUnavailableError(self.explain_unavailable_reason or "Explanations are not available.")
        result = self.gradcam.explain(image.pixels, batch, explained_class, how.method, activation=activation)
        self._observe("explain", time.perf_counter() - started)
        return result

    def _analyse_sync(
        self, data: bytes, explain: ExplainRequest | None, policy: Policy
    ) -> tuple[DecodedImage, float, InputCheckResult, ExplanationResult | None]:
        image = decode_image(data, max_pixels=self.settings.max_pixels)
        assessed = self.assess(image, policy, activation=explain is not None)  # shared with the map
        result = None
        if explain is not None:
            result = self._explain(assessed.image, assessed.batch, assessed.probability, explain, assessed.activation)
        return assessed.image, assessed.probability, assessed.check, result

    def _explain_image_sync(self, image: DecodedImage, probability: float, how: ExplainRequest) -> ExplanationResult:
        return self._explain(image, self._model_input(image), probability, how)

    # --- async API used by the routes ----------------------------------------------------------------------
    async def analyse(
        self, data: bytes, *, explain: ExplainRequest | None = None, policy: Policy | None = None
    ) -> Analysis:
        if explain is not None:
            self._require_explanations()
        policy = policy or self.settings.input_check
        async with self.limiter.slot():
            image, probability, check, result = await to_thread.run_sync(self._analyse_sync, data, explain, policy)
        prediction_id = new_prediction_id()
        await self.cache.put(prediction_id, image, probability, asdict(check))
        return Analysis(prediction_id, image, probability, check, explanation=result)

    async def explain_cached(self, prediction_id: str, how: ExplainRequest | None = None) -> Analysis | None:
        self._require_explanations()
        how = how or ExplainRequest()
        entry = await self.cache.get(prediction_id)
        if entry is None:
            return None
        async with self.limiter.slot():
            result = await to_thread.run_sync(self._explain_image_sync, entry.image, entry.probability, how)
        check = InputCheckResult(**entry.input_check) if entry.input_check else self._unchecked()
        return Analysis(prediction_id, entry.image, entry.probability, check, explanation=result)

    def _unchecked(self) -> InputCheckResult:
        return InputCheckResult(accepted=True, policy="off", detector="off", note="stored without an input check")


# --- loading -------------------------------------------------------------------------------------------------
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


def _load_gradcam(bundle_dir: Path, metadata: BundleMetadata, settings: Settings) -> tuple[Any, Any, str | None]:
    """Return (keras_model, GradCam, None) or (None, None, reason) when explanations are unavailable.

    A missing model.keras or an unimportable TensorFlow degrades to no explanations; a model.keras that is
    present but fails its checksum, does not load or lacks the named layers is a broken bundle (BundleError).
    """
    if not settings.explain_enabled:
        return None, None, "Explanations are disabled in this deployment (PNEUMONIA_EXPLAIN_ENABLED=false)."
    if not (bundle_dir / KERAS_FILENAME).is_file():
        return None, None, f"This model bundle has no {KERAS_FILENAME}, so Grad-CAM explanations are unavailable."
    keras_path = verify_file(bundle_dir, KERAS_FILENAME, metadata.checksums.keras_sha256)
    try:
        import keras

        from app.explain import Explainer
    except ImportError as exc:
        log.warning("TensorFlow/Keras cannot be imported (%s); /explain is disabled", exc)
        return None, None, "Grad-CAM explanations are unavailable: TensorFlow is not installed in this deployment."
    limit_tensorflow_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
    try:
        model = keras.models.load_model(keras_path, compile=False)  # safe_mode stays on
    except Exception as exc:  # Keras raises many types for unreadable archives
        raise BundleError(f"{keras_path}: Keras cannot load the model ({exc})") from exc
    try:
        root = metadata.explain_activation.layer if metadata.explain_activation else None
        gradcam = Explainer(model, metadata.gradcam_layer, metadata.logit_layer, root=root)
    except ValueError as exc:
        raise BundleError(f"{keras_path}: {exc}") from exc
    return model, gradcam, None


def probe_batch(size: tuple[int, int]) -> np.ndarray:
    """(4, H, W, 3): the synthetic probe, its negative, a flat gray and a left-right ramp. Different enough that
    a swapped or mis-converted model cannot agree with its twin on all four (probabilities may saturate, the
    logit layer's inputs do not)."""
    probe = probe_image()
    ramp = np.tile(np.linspace(0, 255, probe.shape[1]), (probe.shape[0], 1)).astype(np.uint8)
    images = [probe, 255 - probe, np.full_like(probe, 110), ramp]
    return np.stack([to_model_input(image, size) for image in images])


def self_test(
    classifier: OnnxClassifier, metadata: BundleMetadata, keras_model: Any, gradcam: Any, tolerance: float
) -> dict[str, float]:
    """ONNX and Keras must agree on four probes, and Grad-CAM must give a finite map; else BundleError.

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
    if gradcam is not None:
        method = gradcam.method()  # the default method, traced here rather than on a first request
        heatmap = method(batch[:1])
        if heatmap.ndim != 3 or not np.all(np.isfinite(heatmap)) or heatmap.min() < 0 or heatmap.max() > 1:
            raise BundleError("self-test failed: Grad-CAM produced a non-finite or out-of-range heatmap")
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


def load_service(settings: Settings, **hooks: Any) -> ModelService:
    bundle_dir = Path(settings.model_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: model bundle directory does not exist (set PNEUMONIA_MODEL_DIR)")
    metadata = read_metadata(bundle_dir)
    onnx_path = verify_file(bundle_dir, ONNX_FILENAME, metadata.checksums.onnx_sha256)
    if (bundle_dir / KERAS_FILENAME).is_file():  # verify both checksums before the slow TensorFlow import
        verify_file(bundle_dir, KERAS_FILENAME, metadata.checksums.keras_sha256)
    classifier = OnnxClassifier(onnx_path, metadata, settings)
    checker = load_checker(bundle_dir, metadata.input_check)
    if checker.model is None:
        log.warning("input check: %s", checker.unavailable_reason)
    keras_model, gradcam, reason = _load_gradcam(bundle_dir, metadata, settings)
    report = self_test(classifier, metadata, keras_model, gradcam, settings.self_test_tolerance)
    log.info("self-test passed: %s", ", ".join(f"{k}={v:.6g}" for k, v in report.items()))
    if reason:
        log.warning("serving without explanations: %s", reason)
    return ModelService(
        settings, metadata, classifier, gradcam, checker=checker, explain_unavailable_reason=reason, **hooks
    )
