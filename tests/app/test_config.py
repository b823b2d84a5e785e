from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import REPO_ROOT, Settings, get_settings


def test_defaults_point_at_the_repository_bundle(monkeypatch):
    monkeypatch.delenv("PNEUMONIA_MODEL_DIR", raising=False)
    settings = Settings()
    assert settings.model_dir == REPO_ROOT / "models" / "default"
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert (settings.max_concurrency, settings.max_queue) == (4, 16)


def test_environment_variables_use_the_pneumonia_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("PNEUMONIA_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("PNEUMONIA_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("PNEUMONIA_EXPLAIN_ENABLED", "false")
    monkeypatch.setenv("MAX_QUEUE", "99")  # unprefixed: ignored
    settings = Settings()
    assert settings.model_dir == Path(tmp_path)
    assert settings.max_upload_bytes == 1234
    assert settings.explain_enabled is False
    assert settings.max_queue == 16


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("PNEUMONIA_MAX_CONCURRENCY", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_get_settings_is_cached():
    assert get_settings() is get_settings()
