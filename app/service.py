"""The service's model state: the verified `pneumonia.Model`, the prediction store and the concurrency limiter.

`load_service` loads the model (verification and self-test: `pneumonia.Model.load`) before the service may
report ready. Any failure raises `BundleError`; the only degraded mode is a bundle without a usable
`model.keras` (or explain disabled): /predict works, /explain answers 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from anyio import to_thread

from app.cache import new_prediction_id
from app.config import Settings
from app.store import open_store
from pneumonia.errors import ErrorCode, PneumoniaError
from pneumonia.explain import OVERLAY_MAX_SIDE
from pneumonia.input_check import InputCheckResult, Policy
from pneumonia.labels import Decision
from pneumonia.model import Explanation, Model, Prediction


class ServiceBusyError(PneumoniaError):
    """More requests in flight than `max_concurrency + max_queue`."""

    code = ErrorCode.BUSY
    headers = {"Retry-After": "1"}


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


@dataclass(frozen=True)
class Analysis:
    """A request's result: the prediction (and explanation) plus the id it is stored under, and (when known) the
    SHA-256 and size of the upload it was made from: kept with the stored prediction for the audit trail."""

    prediction_id: str
    prediction: Prediction
    explanation: Explanation | None = None
    image_sha256: str | None = None
    image_bytes: int | None = None


class ModelService:
    def __init__(self, settings: Settings, model: Model, on_reject: Callable[[], None] | None = None):
        self.settings = settings
        self.model = model
        self.metadata = model.metadata
        self.cache = open_store(settings)  # in memory, or Redis shared by replicas (PNEUMONIA_CACHE_URL)
        self.limiter = ConcurrencyLimiter(settings.max_concurrency, settings.max_queue, on_reject=on_reject)

    @property
    def explain_available(self) -> bool:
        return self.model.explain_available

    def _analyse_sync(
        self,
        data: bytes,
        decision: Decision,
        policy: Policy,
        method: str | None,
        explain: bool,
        overlay_max_side: int | None,
    ) -> Prediction | Explanation:
        assessed = self.model.decode_and_assess(data, policy, activation=explain)  # one ONNX run, shared with the map
        prediction = self.model.prediction(assessed.image, assessed.probability, assessed.check, decision)
        if not explain:
            return prediction
        return self.model.explain_scored(prediction, assessed.batch, method, assessed.activation, overlay_max_side)

    # --- async API used by the routes ----------------------------------------------------------------------
    async def analyse(
        self,
        data: bytes,
        decision: Decision,
        *,
        policy: Policy | None = None,
        explain: bool = False,
        method: str | None = None,
        overlay_max_side: int | None = OVERLAY_MAX_SIDE,
        image_sha256: str | None = None,
        image_bytes: int | None = None,
    ) -> Analysis:
        """Score (and explain) an upload. `image_sha256` and `image_bytes`, the upload's as the audit trail
        recorded them, are stored with the prediction so that GET /explain/{id} can record them too."""
        if explain:
            self.model.require_explanations()
        policy = policy or self.settings.input_check
        async with self.limiter.slot():
            result = await to_thread.run_sync(
                self._analyse_sync, data, decision, policy, method, explain, overlay_max_side
            )
        prediction = result.prediction if isinstance(result, Explanation) else result
        explanation = result if isinstance(result, Explanation) else None
        prediction_id = new_prediction_id()
        await self.cache.put(prediction_id, prediction.image, prediction.probability, asdict(prediction.input_check),
                             image_sha256=image_sha256, image_bytes=image_bytes)  # fmt: skip
        return Analysis(prediction_id, prediction, explanation, image_sha256, image_bytes)

    async def explain_cached(
        self,
        prediction_id: str,
        decision: Decision,
        method: str | None = None,
        overlay_max_side: int | None = OVERLAY_MAX_SIDE,
    ) -> Analysis | None:
        self.model.require_explanations()
        entry = await self.cache.get(prediction_id)
        if entry is None:
            return None
        check = InputCheckResult(**entry.input_check) if entry.input_check else _unchecked()
        prediction = self.model.prediction(entry.image, entry.probability, check, decision)
        async with self.limiter.slot():
            explanation = await to_thread.run_sync(self.model.explain_prediction, prediction, method, overlay_max_side)
        return Analysis(prediction_id, prediction, explanation, entry.image_sha256, entry.image_bytes)


def _unchecked() -> InputCheckResult:
    return InputCheckResult(accepted=True, policy="off", detector="off", note="stored without an input check")


def load_service(settings: Settings, *, observe_inference: Callable[[str, float], None] | None = None,
                 on_reject: Callable[[], None] | None = None) -> ModelService:  # fmt: skip
    return ModelService(settings, load_model(settings, observe_inference), on_reject=on_reject)


def load_model(settings: Settings, observe_inference: Callable[[str, float], None] | None = None) -> Model:
    """The bundle of `settings`, loaded as the service loads it (the PACS worker loads it the same way)."""
    model = Model.load(
        settings.model_dir,
        explain=settings.explain_enabled,
        onnx_threads=settings.onnx_threads,
        tf_threads=(settings.tf_intra_op_threads, settings.tf_inter_op_threads),
        self_test_tolerance=settings.self_test_tolerance,
        max_pixels=settings.max_pixels,
        observe=observe_inference,
    )
    if not settings.explain_enabled:  # the library's reason names its argument; the operator knows the setting
        model.explain_unavailable_reason = (
            "Explanations are disabled in this deployment (PNEUMONIA_EXPLAIN_ENABLED=false)."
        )
    return model
