"""Dataset provenance: the card's statements and a content hash that changes with the images."""

from __future__ import annotations

import pytest

from training import provenance

CARD = """# Chest X-ray training images (pediatric pneumonia)

Some prose that is not a field.

- Source: Kermany, D. (2018), Mendeley Data,
  doi:10.17632/rscbjbr9sj.2.
- Licence: CC BY 4.0.
- Patients: chest X-rays of children aged one to five.
"""


def _dataset(root):
    for name, data in (("train/NORMAL/a.jpeg", b"a"), ("train/PNEUMONIA/b.jpeg", b"bb"), ("notes.txt", b"x")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_card_fields_join_continued_bullets():
    fields = provenance.card_fields(CARD)
    assert fields["source"] == "Kermany, D. (2018), Mendeley Data, doi:10.17632/rscbjbr9sj.2."
    assert fields["licence"] == "CC BY 4.0." and fields["patients"].startswith("chest X-rays of children")


def test_describe_uses_the_card_and_says_unknown_without_one():
    about = provenance.describe({"card": CARD}, "/data/chest_xray")
    assert about["dataset"] == "Chest X-ray training images (pediatric pneumonia)"
    assert about["licence"] == "CC BY 4.0" and about["population"] == "chest X-rays of children aged one to five"
    bare = provenance.describe({"card": None}, "/data/chest_xray")
    assert bare["dataset"] == "chest_xray" and bare["source"].startswith("unknown") and bare["population"] == ""


def test_content_hash_covers_images_names_and_bytes(tmp_path):
    root = _dataset(tmp_path / "d")
    digest, files, size = provenance.content_sha256(root)
    assert (files, size) == (2, 3)
    (root / "notes.txt").write_bytes(b"changed")  # not an image: not part of the training data
    assert provenance.content_sha256(root)[0] == digest
    (root / "train/NORMAL/a.jpeg").write_bytes(b"A")
    assert provenance.content_sha256(root)[0] != digest
    (root / "train/NORMAL/a.jpeg").write_bytes(b"a")
    (root / "train/NORMAL/a.jpeg").rename(root / "train/PNEUMONIA/a.jpeg")  # a relabelled image
    assert provenance.content_sha256(root)[0] != digest


def test_record_reads_the_readme_or_an_explicit_card(tmp_path):
    root = _dataset(tmp_path / "d")
    assert provenance.record(root, None)["card"] is None
    (root / "README.md").write_text(CARD)
    assert provenance.record(root, None)["card_file"] == "README.md"
    other = tmp_path / "card.md"
    other.write_text("# Another card\n")
    assert provenance.record(root, other)["card"] == "# Another card\n"
    with pytest.raises(provenance.ProvenanceError, match="does not exist"):
        provenance.record(root, tmp_path / "missing.md")
