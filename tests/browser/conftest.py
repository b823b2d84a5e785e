"""A real browser against the real service: Debian's Chromium driven by Playwright for Python.

The service is `uvicorn app.main:app` on the shipped bundle (models/default), started once for the module
on a free loopback port. Playwright never downloads a browser here: it drives the system Chromium
(`apt-get install chromium`; .ci/run installs it). Without Chromium or the `playwright` package the tests
skip and say which is missing.

Every page runs in a fresh browser context (no state shared between tests, nothing persisted) that is
offline except for the service: a request for any other host fails the test unless the service's
Content-Security-Policy stopped it inside the browser (ReDoc 2's sidebar names a logo on its maker's CDN;
the policy blocks it and ReDoc hides the image); one that got past the policy is aborted. Screenshots of every test's last state go to
tests/artifacts/browser/ (untracked).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support import REPO_ROOT, Server, launch, missing_tool, start_server, stop, wait_ready  # noqa: F401  (a fixture)

CHROMIUM = os.environ.get("PNEUMONIA_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless Chromium as root in a container: no sandbox, no GPU, and none of its own background traffic
# (updates, sync, field trials) so that every request the tests see comes from the page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "browser"
SHIPPED_BUNDLE = REPO_ROOT / "models" / "default"
LOCAL_HOSTS = {"127.0.0.1"}
# how Playwright names a request that the page's Content-Security-Policy stopped (Chromium's net error)
CSP_FAILURES = {"csp", "net::ERR_BLOCKED_BY_CSP"}
TIMEOUT_MS = 60_000  # an /explain on a busy 2-core CI machine takes seconds, not minutes


@dataclass
class Traffic:
    """What a page asked for: every request, and those for another host (asked, blocked by CSP, sent)."""

    urls: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    blocked_by_csp: list[str] = field(default_factory=list)
    sent_out: list[str] = field(default_factory=list)

    def left_the_browser(self) -> list[str]:
        return [url for url in self.external if url not in self.blocked_by_csp] + self.sent_out

    def posts_to(self, path: str) -> int:
        return sum(1 for url in self.urls if url.startswith("POST ") and urlparse(url[5:]).path == path)


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob") or parsed.hostname in LOCAL_HOSTS


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[dev]')"
    )
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing_tool(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def shipped_bundle() -> Path:
    return SHIPPED_BUNDLE


@pytest.fixture(scope="session")
def service(browser, shipped_bundle, tmp_path_factory):
    """The real service on the shipped bundle, with the default settings a user gets; started once for all
    the browser tests (TensorFlow's import and the bundle's self-test take most of their time)."""
    log_path = tmp_path_factory.mktemp("browser_server") / "server.log"
    process, base_url = launch(shipped_bundle, log_path, PNEUMONIA_INPUT_CHECK="refuse")  # the default policy
    try:
        wait_ready(process, base_url, log_path)
        yield Server(process, base_url, log_path)
    finally:
        if process.poll() is None:
            stop(process)


@pytest.fixture
def traffic() -> Traffic:
    return Traffic()


@pytest.fixture
def page(browser, service, traffic, request):
    context = browser.new_context(base_url=service.base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)

    def offline(route) -> None:
        if _is_local(route.request.url):
            route.continue_()
        else:
            traffic.sent_out.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", offline)
    page = context.new_page()

    def record(req) -> None:
        traffic.urls.append(f"{req.method} {req.url}")
        if not _is_local(req.url):
            traffic.external.append(req.url)

    page.on("request", record)
    page.on(
        "requestfailed",
        lambda req: req.failure in CSP_FAILURES and traffic.blocked_by_csp.append(req.url),
    )
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}.png"), full_page=True)
    storage = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    context.close()
    assert traffic.left_the_browser() == [], f"requests for another host than the service: {traffic.external}"
    assert errors == [], f"uncaught JavaScript errors: {errors}"
    assert storage == [0, 0, ""], f"the page stored something in the browser: {storage}"
