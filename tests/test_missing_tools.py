"""A program the tests run for real (Orthanc, redis-server, Chromium) that is missing skips those tests on a
developer's machine, but fails them under CI (tests.support.missing_tool): .ci/run installs them and sets CI,
so a run without them cannot pass by skipping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tests.pacs.orthanc
from tests.support import REPO_ROOT, missing_tool

HELPERS = ("tests/pacs/orthanc.py", "tests/redis_server.py", "tests/browser/conftest.py")


def test_a_missing_tool_skips_without_ci_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        missing_tool("not installed (apt-get install it)")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set, so a missing tool fails instead of skipping"):
        missing_tool("not installed (apt-get install it)")


def test_orthanc_missing_under_ci_fails_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tests.pacs.orthanc, "orthanc_binary", lambda: None)  # as on a machine without it
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="Orthanc is not installed"):
        tests.pacs.orthanc.start_orthanc(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Orthanc is not installed"):
        tests.pacs.orthanc.start_orthanc(tmp_path)


def test_every_tool_helper_goes_through_missing_tool_and_ci_sets_ci() -> None:
    for path in HELPERS:
        source = (REPO_ROOT / path).read_text()
        assert "missing_tool(" in source and "pytest.skip(" not in source, path
    assert re.search(r"^export CI=\S+", (REPO_ROOT / ".ci" / "run").read_text(), re.MULTILINE)
