"""Where a run's data came from: the dataset card and a content hash, recorded in the run at train time.

The card is the `--dataset-card` file, or else a README in the `--data` folder. Its "- Key: value" bullets
(Source, Licence, Patients) are what the exported bundle says about its data, so a bundle never describes
a dataset it was not trained on.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pneumonia.imaging import IMAGE_SUFFIXES
from training.errors import TrainingError

CARD_NAMES = ("README.md", "README.txt", "README")
_BULLET = re.compile(r"^[-*]\s+([A-Za-z][A-Za-z ]*):\s*(.*)$")
_UNKNOWN = "unknown (no dataset card was given at train time)"


class ProvenanceError(TrainingError):
    pass


def find_card(data_dir: Path) -> Path | None:
    return next((data_dir / name for name in CARD_NAMES if (data_dir / name).is_file()), None)


def content_sha256(data_dir: Path) -> tuple[str, int, int]:
    """SHA-256 over the sorted relative paths and contents of every image under `data_dir`: (hash, files, bytes).

    Two folders hash alike only when they hold the same images under the same names (and so the same labels).
    """
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    digest = hashlib.sha256()
    size = 0
    for path in files:
        data = path.read_bytes()
        size += len(data)
        digest.update(f"{path.relative_to(data_dir).as_posix()}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest(), len(files), size


def record(data_dir: Path, card: Path | None) -> dict[str, Any]:
    """The provenance entry of data.json."""
    if card is not None and not card.is_file():
        raise ProvenanceError(f"dataset card {card} does not exist")
    card = card or find_card(data_dir)
    sha256, files, size = content_sha256(data_dir)
    return {
        "card_file": card.name if card else None,
        "card": card.read_text(errors="replace") if card else None,
        "content_sha256": sha256,
        "files": files,
        "bytes": size,
    }


def card_fields(card: str | None) -> dict[str, str]:
    """Lower-cased "- Key: value" bullets of a card; indented lines continue the bullet above them."""
    fields: dict[str, str] = {}
    key = None
    for line in (card or "").splitlines():
        match = _BULLET.match(line.strip()) if not line.startswith((" ", "\t")) else None
        if match:
            key = match.group(1).strip().lower()
            fields[key] = match.group(2).strip()
        elif key and line.startswith((" ", "\t")) and line.strip():
            fields[key] += " " + line.strip()
        else:
            key = None
    return fields


def card_title(card: str | None, fallback: str) -> str:
    """The card's first Markdown heading, else `fallback` (the dataset folder's name)."""
    heading = next((line.lstrip("#").strip() for line in (card or "").splitlines() if line.startswith("#")), "")
    return heading or fallback


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".")


def describe(provenance: dict[str, Any], data_dir: str) -> dict[str, str]:
    """dataset, source, licence and population as the card states them; 'unknown' where it is silent."""
    card = provenance.get("card")
    fields = card_fields(card)
    silent = _UNKNOWN if card is None else "not stated in the dataset card"
    licence = fields.get("licence") or fields.get("license")
    population = fields.get("patients") or fields.get("population")
    return {
        "dataset": card_title(card, Path(data_dir).name),
        "source": fields.get("source", silent),
        "licence": _first_sentence(licence) if licence else silent,
        "population": _first_sentence(population) if population else "",
    }
