"""Fixtures for in-process service tests: one loaded ModelService per session, apps wired around it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app
from app.service import ModelService, load_service
from tests.redis_server import redis_server  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="session")
def loaded_service(tiny_bundle: Path) -> ModelService:
    """The tiny bundle loaded, verified and self-tested once (TensorFlow start-up is the slow part)."""
    return load_service(Settings(model_dir=tiny_bundle))


@pytest.fixture
def make_app(loaded_service: ModelService, tiny_bundle: Path) -> Callable[..., object]:
    """Build an app whose state holds a ModelService sharing the loaded session and Grad-CAM.

    Settings overrides apply to the app (upload limit) and to the fresh service (limiter, cache).
    """

    def factory(*, loaded: bool = True, **overrides):
        overrides.setdefault("input_check", "off")  # see tests/support.py: the tiny bundle's check means nothing
        settings = Settings(model_dir=tiny_bundle, **overrides)
        app = create_app(settings)
        if loaded:
            model = copy.copy(loaded_service.model)  # the same sessions, this app's metrics and explain setting
            model.observe = app.state.metrics.observe_inference
            if not settings.explain_enabled:
                model.explainer, model.explain_unavailable_reason = None, "Explanations are disabled."
            app.state.service = ModelService(settings, model, on_reject=app.state.metrics.rejected.inc)
        return app

    return factory


@pytest.fixture(scope="session")
def sample_jpeg(sample_images) -> bytes:
    return sample_images["PNEUMONIA"][0].read_bytes()
