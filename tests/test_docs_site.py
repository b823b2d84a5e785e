"""The documentation's generated parts match the code: the error-code table is the enum, the README stays short.

The site itself is built by `mkdocs build --strict` in .ci/run (every include and link must resolve); these
tests need no MkDocs, so they run in the fast default suite.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from pneumonia.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_error_codes", ROOT / "docs" / "gen_error_codes.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(markdown: str) -> dict[str, tuple[int, str]]:
    """code -> (status, meaning) from the rendered error-code table's rows."""
    rows = {}
    for line in markdown.splitlines():
        match = re.fullmatch(r"\| `([a-z_]+)` \| (\d{3}) \| (.*) \|", line)
        if match:
            rows[match[1]] = (int(match[2]), match[3].replace(r"\|", "|"))
    return rows


def test_the_http_api_page_gets_a_table_of_every_error_code_with_its_status_and_meaning():
    hook = load_hook()
    page = (ROOT / "docs" / "http-api.md").read_text()
    assert page.count(hook.MARKER) == 1, "docs/http-api.md must hold the error-code marker exactly once"

    rendered = hook.on_page_markdown(page, page=None, config=None, files=None)

    assert hook.MARKER not in rendered
    rows = table_rows(rendered)
    for code in ErrorCode:
        assert rows.get(code.value) == (code.status, code.meaning), f"{code.value} is missing or differs"
    assert set(rows) == {code.value for code in ErrorCode}  # and nothing else


def test_the_table_lists_each_code_once_in_the_enums_order():
    hook = load_hook()
    listed = list(table_rows(hook.error_code_table()))
    assert len(listed) == len(set(listed))
    assert listed[: len(ErrorCode)] == [code.value for code in ErrorCode]


def test_the_readme_is_short_and_its_relative_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\(([^)#\s]+)", readme):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


# A status next to a code, as a page writes it: a table row `| 415 | `code` |`, or `415 code` / 415 `code` in prose.
STATUS_AND_CODE = (
    re.compile(r"^\|\s*([45]\d{2})\s*\|\s*`([a-z_]+)`\s*\|", re.MULTILINE),
    re.compile(r"`([45]\d{2}) ([a-z_]+)`"),
    re.compile(r"\b([45]\d{2}) `([a-z_]+)`"),
)


def statuses_with_codes(markdown: str) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for pattern in STATUS_AND_CODE for m in pattern.finditer(markdown)]


def test_every_status_and_code_a_page_names_is_one_of_the_enum():
    pages = [*sorted((ROOT / "docs").glob("**/*.md")), ROOT / "README.md"]
    named = {(page.name, status, code) for page in pages for status, code in statuses_with_codes(page.read_text())}
    assert len(named) >= 10  # the pages do name codes: the patterns below still find them
    known = {code.value: code.status for code in ErrorCode}
    wrong = sorted((page, status, code) for page, status, code in named if known.get(code) != status)
    assert not wrong, f"not an error code of pneumonia.errors.ErrorCode with that status: {wrong}"


def test_the_pages_list_the_raw_media_types_the_service_accepts():
    from app.api.uploads import RAW_MEDIA_TYPES

    hook = load_hook()
    for name in ("http-api.md", "operating.md"):
        page = (ROOT / "docs" / name).read_text()
        assert hook.MEDIA_TYPES_MARKER in page, f"docs/{name} should take the media types from the code"
        rendered = hook.on_page_markdown(page, page=None, config=None, files=None)
        assert all(f"`{media_type}`" in rendered for media_type in RAW_MEDIA_TYPES)
    assert "`application/octet-stream`" in hook.raw_media_types()  # sniffed from the bytes, so accepted


def test_the_new_site_page_quotes_the_verdict_as_the_code_words_it():
    """docs/new-site.md shows the site report's verdict for a site whose specificity fell, numbers left out:
    the same sentences training.site_report.verdict writes, with every number replaced by '…'."""
    from training.site_report import verdict

    def estimate(value: float, low: float, high: float) -> dict[str, float]:
        return {"value": value, "ci_low": low, "ci_high": high}

    point = {"threshold": 0.8742, "sensitivity": estimate(0.99, 0.97, 1.0), "specificity": estimate(0.73, 0.67, 0.78),
             "recorded_sensitivity": 0.95, "recorded_specificity": 0.985}  # fmt: skip
    written = verdict({"default_operating_point": "sensitivity_95", "reference": "validation", "in_sample": False,
                       "n": {"NORMAL": 120, "PNEUMONIA": 120}, "roc_auc": estimate(0.97, 0.95, 0.99),
                       "operating_points": {"sensitivity_95": point}})  # fmt: skip
    numbers_left_out = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?: \[[^\]]*\])?", "…", written)

    page = (ROOT / "docs" / "new-site.md").read_text()
    quoted = re.search(r'"(At `sensitivity_95`.*?)"', page, re.DOTALL)
    assert quoted, "docs/new-site.md no longer quotes the verdict"
    assert " ".join(quoted[1].split()) == " ".join(numbers_left_out.split())
