"""MkDocs hook (mkdocs.yml `hooks:`): the table of error codes, generated from the enum at build time.

Where a page says `<!-- error-codes -->`, the hook puts a Markdown table of every code: its HTTP status and
what it means, in the enum's order. The codes live in `pneumonia.errors.ErrorCode`; the access errors
(API keys, rate limit) still have their own enum in `app.api.auth.AccessCode` until they join it, and are
listed too, so the table names every code the service can answer with. Nothing is written to docs/: the
table exists only in the built page, so it cannot go stale. tests/test_docs_site.py checks it against the enums.

Run directly to print the table: `python docs/gen_error_codes.py`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from enum import Enum
from typing import Any

MARKER = "<!-- error-codes -->"
# module:attribute of every enum of error codes, in table order; one that does not exist (yet, or any more)
# is skipped, so moving AccessCode into ErrorCode needs no change here
SOURCES = ("pneumonia.errors:ErrorCode", "app.api.auth:AccessCode")
HEADER = ("Code", "HTTP status", "Meaning")


def error_codes() -> Iterator[tuple[str, int, str]]:
    """(code, status, meaning) for every code of every source enum, each code once."""
    seen: set[str] = set()
    for source in SOURCES:
        module_name, attribute = source.split(":")
        try:
            enum: type[Enum] = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            continue
        for member in enum:
            if member.value not in seen:
                seen.add(member.value)
                yield member.value, member.status, member.meaning  # type: ignore[attr-defined]


def _cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def error_code_table() -> str:
    rows = [f"| {' | '.join(HEADER)} |", "|---|---|---|"]
    rows += [f"| `{code}` | {status} | {_cell(meaning)} |" for code, status, meaning in error_codes()]
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: replace the marker with the generated table."""
    return markdown.replace(MARKER, error_code_table()) if MARKER in markdown else markdown


if __name__ == "__main__":
    print(error_code_table())
