"""The PACS worker's pieces that need no server and no model: credentials, arguments, UIDs, the banner, imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.pacs import ConfigError, main, make_session
from pneumonia.dicom.common import result_uids
from pneumonia.dicom.sc import banner_height, with_banner
from pneumonia.model import ModelIdentity
from tests.pacs.conftest import SHIPPED
from tests.support import REPO_ROOT

MODEL = ModelIdentity("m", "1", "b", "0" * 64)


def test_basic_credentials_come_from_a_password_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    session = make_session(Settings(pacs_username="worker", pacs_password_file=tmp_path / "pw"))
    assert session.auth == ("worker", "s3cret")


def test_a_bearer_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("tok-123\n")
    assert make_session(Settings(pacs_token_file=tmp_path / "token")).headers["Authorization"] == "Bearer tok-123"
    monkeypatch.setenv("PNEUMONIA_PACS_TOKEN", "tok-env")
    assert make_session(Settings()).headers["Authorization"] == "Bearer tok-env"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pacs_username": "u"}, "without PNEUMONIA_PACS_PASSWORD_FILE"),
        ({"pacs_password": SecretStr("p")}, "without PNEUMONIA_PACS_USERNAME"),
        ({"pacs_username": "u", "pacs_password": SecretStr("p"), "pacs_token": SecretStr("t")}, "not both"),
        ({"pacs_token_file": "/nonexistent/token"}, "cannot be read"),
    ],
)
def test_unusable_credentials_are_a_configuration_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        make_session(Settings(**settings))


def test_an_empty_secret_file_is_refused(tmp_path):
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        make_session(Settings(pacs_username="u", pacs_password_file=tmp_path / "pw"))


def test_configuration_errors_exit_2(tmp_path, capsys):
    settings = Settings(model_dir=SHIPPED, pacs_username="u")
    assert main(["--url", "http://127.0.0.1:1/dicom-web"], settings=settings) == 2
    assert "error: PNEUMONIA_PACS_USERNAME is set without" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:1/dicom-web"], settings=Settings(model_dir=tmp_path)) == 2


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no --url and no PNEUMONIA_PACS_URL
        ["--url", "http://x/dicom-web", "--study-date", "2024-01-01"],
        ["--url", "http://x/dicom-web", "--interval", "0"],
        ["--url", "http://x/dicom-web", "--once", "--interval", "5"],
        ["--url", "http://x/dicom-web", "--modality", "C R"],
    ],
)
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as stopped:
        main(argv, settings=Settings(model_dir=SHIPPED))
    assert stopped.value.code == 2


def test_result_uids_are_derived_from_what_identifies_a_result():
    uids = result_uids("1.2.3", "1.2.3.4", MODEL, "youden", 0.5, "refuse")
    assert uids == result_uids("1.2.3", "1.2.3.4", MODEL, "youden", 0.5, "refuse")
    assert len({uids.sr_series, uids.sc_series, uids.sr_instance, uids.sc_instance}) == 4
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in (uids.sr_instance, uids.sc_series))
    for other in (
        result_uids("1.2.3", "1.2.3.5", MODEL, "youden", 0.5, "refuse"),
        result_uids("1.2.3", "1.2.3.4", MODEL, "max_f1", 0.5, "refuse"),
        result_uids("1.2.3", "1.2.3.4", MODEL, "youden", 0.5, "warn"),
        result_uids("1.2.3", "1.2.3.4", ModelIdentity("m", "1", "b", "1" * 64), "youden", 0.5, "refuse"),
    ):
        assert other.sr_instance != uids.sr_instance
    same_study = result_uids("1.2.3", "1.2.3.5", MODEL, "max_f1", 0.3, "warn")
    assert (same_study.sr_series, same_study.sc_series) == (uids.sr_series, uids.sc_series)


@pytest.mark.parametrize("width", [64, 224, 512, 2048])
def test_the_banner_is_burned_in_above_the_untouched_image(width):
    rgb = np.full((300, width, 3), 90, np.uint8)
    out = with_banner(rgb, "gradcam map for NORMAL | P(pneumonia) 0.100 at youden | model 1")
    band = banner_height(width)
    assert out.shape == (300 + band, width, 3)
    assert np.array_equal(out[band:], rgb)
    text = (out[:band, :, 0] > 180) & (out[:band, :, 2] < 100)
    assert text.sum() > 0.01 * band * width


def test_the_library_side_imports_no_web_framework_and_no_app():
    code = (
        "import sys, pneumonia.dicom, pneumonia.dicom.worker; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn', 'app', 'training'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_images_are_candidates():
    from pneumonia.dicom.worker import _is_image

    assert _is_image("1.2.840.10008.5.1.4.1.1.1") and _is_image("1.2.840.10008.5.1.4.1.1.1.1")  # CR, DX
    assert _is_image("1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture (a wrapped film)
    assert not _is_image("1.2.840.10008.5.1.4.1.1.11.1")  # a presentation state in a CR series
    assert not _is_image("1.2.840.10008.5.1.4.1.1.88.34")  # an SR
    assert _is_image("1.2.826.0.1.3680043.9.9999.1") and _is_image("")  # unknown or absent: given the benefit
