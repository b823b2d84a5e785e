"""Hardening suite: hypothesis profiles and the shared uvicorn-subprocess fixture.

HYPOTHESIS_PROFILE=long selects the long fuzzing run; the default profile keeps `tests/hardening` fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.hardening import corpus
from tests.support import Server, copy_bundle, launch, start_server, stop, wait_ready  # noqa: F401

settings.register_profile(
    "hardening",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
settings.register_profile(
    "long",
    max_examples=20000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hardening"))


@pytest.fixture(scope="session")
def shared_server(tiny_bundle, tmp_path_factory):
    """One full (explain-capable) server for the corpus, schemathesis and load modules: start-up (TensorFlow
    import, self-test) is the dominant cost of this suite on a small machine."""
    workdir = tmp_path_factory.mktemp("shared_server")
    bundle = copy_bundle(tiny_bundle, workdir / "bundle")
    log_path = workdir / "server.log"
    process, base_url = launch(
        bundle,
        log_path,
        PNEUMONIA_MAX_UPLOAD_BYTES=str(corpus.UPLOAD_LIMIT),
        PNEUMONIA_CACHE_SIZE=str(corpus.SHARED_CACHE_SIZE),
    )
    try:
        wait_ready(process, base_url, log_path)
        yield Server(process, base_url, log_path)
    finally:
        if process.poll() is None:
            assert stop(process) in (0, -15), "uvicorn did not exit on SIGTERM"


if os.environ.get("PNEUMONIA_TEST_BUNDLE"):
    # Development shortcut: reuse an already-built tiny bundle instead of training one (minutes on a busy
    # machine). The default and CI runs leave this unset and use the session fixture from tests/conftest.py.

    @pytest.fixture(scope="session")
    def tiny_bundle() -> Path:
        return Path(os.environ["PNEUMONIA_TEST_BUNDLE"])
