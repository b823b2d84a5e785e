"""/docs (Swagger UI) and /redoc (ReDoc) render offline, from the service's own copies of their assets,
and list every operation of the app's OpenAPI schema."""

from __future__ import annotations

import pytest

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def operations() -> dict[str, tuple[str, str]]:
    """operationId -> (METHOD, path) for every operation in app.openapi()."""
    from app.main import create_app

    schema = create_app().openapi()
    return {
        operation["operationId"]: (method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def assert_assets_are_local(traffic, vendor: str) -> None:
    assert any(f"/static/vendor/{vendor}/" in url for url in traffic.urls), traffic.urls


def test_swagger_ui_lists_every_operation_offline(page, traffic, operations):
    response = page.goto("/docs")
    assert response.status == 200 and "cdn" not in response.text().lower()
    page.wait_for_function("n => document.querySelectorAll('.opblock').length >= n", arg=len(operations))
    listed = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(b => [
            b.querySelector('.opblock-summary-method').textContent.trim(),
            b.querySelector('.opblock-summary-path').getAttribute('data-path'),
        ])""",
    )
    assert sorted(map(tuple, listed)) == sorted(operations.values())
    assert_assets_are_local(traffic, "swagger-ui")


def test_redoc_lists_every_operation_offline(page, traffic, operations):
    response = page.goto("/redoc")
    assert response.status == 200 and "cdn" not in response.text().lower()
    selector = "li[data-item-id*='operation/']"
    page.wait_for_function("([s, n]) => document.querySelectorAll(s).length >= n", arg=[selector, len(operations)])
    items = page.eval_on_selector_all(selector, "items => items.map(i => i.getAttribute('data-item-id'))")
    assert sorted(item.rsplit("operation/", 1)[1] for item in items) == sorted(operations)
    assert "RESEARCH USE ONLY" in page.inner_text("h1")
    assert_assets_are_local(traffic, "redoc")
