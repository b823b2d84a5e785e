"""Fixtures for the PACS tests: the shipped bundle loaded once (its input check gives meaningful verdicts on real
X-rays, and it explains), and a real Orthanc per module (tests/pacs/orthanc.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.service import load_model
from pneumonia.model import Model
from tests.pacs.orthanc import Orthanc, start_orthanc

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "default"


@pytest.fixture(scope="session")
def shipped_model() -> Model:
    return load_model(Settings(model_dir=SHIPPED))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()
