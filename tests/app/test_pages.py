"""The page, the docs and the model card as HTTP resources (no model needed; the browser tests render them)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes.pages import STATIC_DIR
from app.config import Settings
from app.main import create_app
from pneumonia.bundle import MODEL_CARD_FILENAME

VENDOR = STATIC_DIR / "vendor"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    # no `with`: the lifespan (model loading) does not run; none of these routes needs the model
    return TestClient(create_app(Settings(model_dir=tmp_path)))


def local_references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_the_page_and_everything_it_references_are_served_locally(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    references = local_references(response.text)
    assert references and all(ref.startswith("/") and not ref.startswith("//") for ref in references)
    for ref in references:
        if ref.startswith("/static/"):
            assert client.get(ref).status_code == 200, ref
    assert client.head("/").status_code == 200


@pytest.mark.parametrize(("path", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_the_docs_load_their_assets_from_this_service(client, path, asset):
    html = client.get(path).text
    assert "cdn." not in html and "fonts.googleapis" not in html
    scripts = [ref for ref in local_references(html) if ref.endswith(".js")]
    assert scripts == [next(ref for ref in scripts if ref.endswith(asset))] and scripts[0].startswith("/static/vendor/")
    assert client.get(scripts[0]).status_code == 200


def test_vendored_assets_are_the_pinned_bytes_with_their_licences():
    sums = [line.split(maxsplit=1) for line in (VENDOR / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert sums
    for digest, name in sums:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert {"swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"} <= {name for _, name in sums}


def test_the_model_card_is_served_when_the_bundle_has_one(client, tmp_path):
    assert client.get("/model/card").json()["error"]["code"] == "model_card_not_found"
    (tmp_path / MODEL_CARD_FILENAME).write_text("# Model card\n", encoding="utf-8")
    response = client.get("/model/card")
    assert response.status_code == 200 and response.text == "# Model card\n"
    assert response.headers["content-type"].startswith("text/markdown")
