"""MkDocs hook (mkdocs.yml `hooks:`): the table of error codes, generated from the enum at build time.

Where a page says `<!-- error-codes -->`, the hook puts a Markdown table of every code: its HTTP status and
what it means, in the enum's order. Where a page says `<!-- raw-media-types -->`, it puts the Content-Types the
service accepts as a raw image body (`app.api.uploads.RAW_MEDIA_TYPES`), so no page retypes that list either. Every code lives in `pneumonia.errors.ErrorCode`, the access errors (API
keys, rate limit) included. Nothing is written to docs/: the table exists only in the built page, so it cannot
go stale. tests/test_docs_site.py checks it against the enum.

Run directly to print the table: `python docs/gen_error_codes.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MARKER = "<!-- error-codes -->"
MEDIA_TYPES_MARKER = "<!-- raw-media-types -->"


HEADER = ("Code", "HTTP status", "Meaning")


def error_codes() -> Iterator[tuple[str, int, str]]:
    """(code, status, meaning) for every code, in the enum's order."""
    from pneumonia.errors import ErrorCode

    for member in ErrorCode:
        yield member.value, member.status, member.meaning


def _cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", " ")


def error_code_table() -> str:
    rows = [f"| {' | '.join(HEADER)} |", "|---|---|---|"]
    rows += [f"| `{code}` | {status} | {_cell(meaning)} |" for code, status, meaning in error_codes()]
    return "\n".join(rows)


def raw_media_types() -> str:
    """The accepted raw-body Content-Types in words: `a`, `b` or `c`."""
    from app.api.uploads import RAW_MEDIA_TYPES

    quoted = [f"`{media_type}`" for media_type in RAW_MEDIA_TYPES]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: replace the markers with the generated table and list."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, error_code_table())
    if MEDIA_TYPES_MARKER in markdown:
        markdown = markdown.replace(MEDIA_TYPES_MARKER, raw_media_types())
    return markdown


if __name__ == "__main__":
    print(error_code_table())
