"""The page at `/` in Chromium against a service that needs an API key (PNEUMONIA_API_KEYS_FILE).

The page meets a 401, asks for the key in its own form, keeps it in the page's memory only (the `page` fixture
fails a test that leaves anything in localStorage, sessionStorage or a cookie), sends it as
`Authorization: Bearer`, never in a URL, asks again when a key is refused and after a reload, and opens the model
card with it. /docs offers Swagger UI's Authorize button. The server is the shipped bundle at the default policy,
as in tests/browser/conftest.py, with a keys file.
"""

from __future__ import annotations

import os

import pytest

from app.keys import keys_file_line
from tests.browser.conftest import SHIPPED_BUNDLE
from tests.support import REPO_ROOT, Server, launch, stop, wait_ready

TOKEN = "tok-" + os.urandom(16).hex()
NORMAL_SAMPLE = sorted((REPO_ROOT / "tests" / "data" / "samples" / "NORMAL").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def service(browser, tmp_path_factory):
    """Overrides the conftest's `service` for this module: the same server, with API keys."""
    workdir = tmp_path_factory.mktemp("browser_keyed")
    keys = workdir / "api-keys"
    keys.write_text(keys_file_line("browser", TOKEN) + "\n")
    log_path = workdir / "server.log"
    process, base_url = launch(
        SHIPPED_BUNDLE, log_path, PNEUMONIA_INPUT_CHECK="refuse", PNEUMONIA_API_KEYS_FILE=str(keys)
    )
    try:
        wait_ready(process, base_url, log_path)
        yield Server(process, base_url, log_path)
    finally:
        if process.poll() is None:
            stop(process)


def sent_keys(page) -> list[tuple[str, str | None]]:
    """(method path, Authorization header) of every request the page sends from now on."""
    seen: list[tuple[str, str | None]] = []
    page.on("request", lambda r: seen.append((f"{r.method} {r.url}", r.headers.get("authorization"))))
    return seen


def submit_key(page, key: str) -> None:
    page.fill("#auth-token", key)
    page.press("#auth-token", "Enter")


def test_the_page_asks_for_the_key_keeps_it_in_memory_and_sends_it(page, traffic):
    seen = sent_keys(page)
    with page.expect_response(lambda r: r.url.endswith("/model")) as first:
        page.goto("/")
    assert first.value.status == 401
    page.wait_for_selector("#auth:not([hidden])")
    assert page.evaluate("() => document.activeElement.id") == "auth-token"  # ready to paste
    assert page.get_attribute("#auth-token", "type") == "password"

    with page.expect_response(lambda r: r.url.endswith("/model")) as refused:
        submit_key(page, "not-the-key")
    assert refused.value.status == 401
    page.wait_for_selector("#auth-error:not([hidden])")
    assert "not accepted" in page.inner_text("#auth-error")
    assert page.is_visible("#auth")

    with page.expect_response(lambda r: r.url.endswith("/model")) as accepted:
        submit_key(page, f"  {TOKEN}  ")  # pasted with spaces around it
    assert accepted.value.status == 200
    page.wait_for_selector("#model-summary table")
    assert page.is_hidden("#auth") and page.input_value("#auth-token") == ""

    with page.expect_response(lambda r: "/explain" in r.url) as answer:
        page.set_input_files(
            "#file-input",
            files=[{"name": NORMAL_SAMPLE.name, "mimeType": "image/jpeg", "buffer": NORMAL_SAMPLE.read_bytes()}],
        )
    assert answer.value.status == 200, answer.value.text()
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#label") == answer.value.json()["label"]

    api_calls = [(url, auth) for url, auth in seen if "/static/" not in url and not url.endswith("/")]
    assert ("POST " + answer.value.url, f"Bearer {TOKEN}") in api_calls
    assert all(TOKEN not in url for url, _ in seen)  # never in a URL
    assert all(auth in (None, f"Bearer {TOKEN}", "Bearer not-the-key") for _, auth in seen)
    assert page.evaluate("() => Object.keys(window).filter(k => /token|apikey/i.test(k))") == []  # no global copy

    page.reload()  # memory only: a reload forgets it
    page.wait_for_selector("#auth:not([hidden])")
    assert traffic.left_the_browser() == []


def test_a_401_on_upload_asks_and_then_sends_the_same_file(page):
    """The key form can also appear mid-upload: the upload waits for it and goes out again with the key."""
    page.goto("/")
    page.wait_for_selector("#auth:not([hidden])")
    page.set_input_files(
        "#file-input",
        files=[{"name": NORMAL_SAMPLE.name, "mimeType": "image/jpeg", "buffer": NORMAL_SAMPLE.read_bytes()}],
    )
    with page.expect_response(lambda r: "/explain" in r.url and r.status == 200) as answer:
        submit_key(page, TOKEN)
    page.wait_for_selector("#result:not([hidden])")
    assert answer.value.request.headers["authorization"] == f"Bearer {TOKEN}"


def test_the_model_card_link_opens_with_the_key(page):
    page.goto("/")
    submit_key(page, TOKEN)
    page.wait_for_selector("#model-summary table")
    with page.context.expect_page() as opened:
        page.click("#model-card-link")
    card = opened.value
    card.wait_for_url(lambda url: url.startswith("blob:"), wait_until="commit")
    card.wait_for_function("() => document.body && document.body.innerText.length > 200")
    text = card.inner_text("body")
    assert "unauthorized" not in text and len(text) > 200  # the Markdown card, not a 401
    card.close()


def test_the_api_docs_offer_authorize(page):
    page.goto("/docs")
    page.wait_for_selector(".opblock")
    assert page.is_visible("button.authorize")
    page.click("button.authorize")
    page.wait_for_selector(".auth-container")
    assert "APIKey" in page.inner_text(".auth-container") and "Bearer" in page.inner_text(".auth-container")
