"""`python -m training population-check`: a schema-2 bundle upgraded to schema 3, on real files.

The adult collections are generated here (two folders with the tables the real ones have), so the test
exercises the verb's mechanics: fitting, the held-out measurement, the checksummed file, the metadata record,
the staged write that leaves the source untouched, and the refusals. How well the check tells adults from
children is measured on real films (results/population), not here.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import METADATA_FILENAME, Population, read_metadata, sha256_file
from pneumonia.model import Model
from training.cli import main

POPULATION = Population(age_min_years=1, age_max_years=5, views=["AP"], modality="frontal chest radiographs",
                        sites=1, source="the tiny test dataset")  # fmt: skip


def _adult_collections(root: Path, tiny_dataset: Path) -> Path:
    """nih/ (labels.csv) and ieee8023/ (metadata.csv): the tiny dataset's films, brightened and re-framed
    so the two classes differ, with ages (one NIH child, reported but not fitted)."""
    sources = sorted((tiny_dataset / "train").rglob("*.png")) + sorted((tiny_dataset / "train").rglob("*.jp*g"))
    for collection, table, columns in (
        ("nih", "labels.csv", ["path", "nih_labels", "age", "sex", "view", "patient_id"]),
        ("ieee8023", "metadata.csv", ["path", "patient_id", "age", "view", "finding", "license"]),
    ):
        folder = root / collection
        (folder / "NORMAL").mkdir(parents=True)
        rows = []
        for i, source in enumerate(sources[:10]):
            gray = np.asarray(Image.open(source).convert("L"), dtype=np.float32)
            adult = np.clip(gray * 0.6 + 90, 0, 255).astype(np.uint8)
            name = f"NORMAL/{collection}_{i}.png"
            Image.fromarray(np.pad(adult, 8, constant_values=200)).save(folder / name)
            age = "12" if (collection == "nih" and i == 0) else str(30 + i)
            rows.append({"path": name, "nih_labels": "No Finding", "age": age, "sex": "F", "view": "PA",
                         "patient_id": f"{collection}{i}", "finding": "No Finding", "license": "test"})  # fmt: skip
        with (folder / table).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return root


def _schema_2(bundle: Path) -> Path:
    """The bundle as schema 2 wrote it: without the fields schema 3 added (pneumonia/bundle.py) and without the
    population check's file, so the upgrade under test starts from a real older bundle."""
    path = bundle / METADATA_FILENAME
    metadata = json.loads(path.read_text())
    for field in ("population", "population_check", "image_quality"):
        metadata.pop(field, None)
    metadata["schema_version"] = 2
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    (bundle / "population_check.npz").unlink(missing_ok=True)
    return bundle


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, tiny_bundle, tiny_run, tiny_dataset):
    root = tmp_path_factory.mktemp("population")
    source = _schema_2(shutil.copytree(tiny_bundle, root / "source"))
    assert read_metadata(source).schema_version == 2
    before = sha256_file(source / METADATA_FILENAME)
    population = root / "population.json"
    population.write_text(POPULATION.model_dump_json())
    adults = _adult_collections(root / "adults", tiny_dataset)
    code = main(["population-check", "--bundle", str(source), "--split", str(tiny_run / "split.csv"),
                 "--data", str(tiny_dataset), "--adults", str(adults), "--out", str(root / "upgraded"),
                 "--population", str(population), "--evidence", str(root / "evidence")])  # fmt: skip
    assert code == 0
    return {"root": root, "source": source, "before": before, "bundle": root / "upgraded", "adults": adults}


def test_the_upgraded_bundle_declares_and_checks_its_population(upgraded):
    metadata = read_metadata(upgraded["bundle"])
    assert metadata.schema_version == 3
    assert metadata.population == POPULATION
    check = metadata.population_check
    assert check is not None and check.validation_acceptance >= 0.99
    assert set(check.held_out) == {"ieee8023 (fitted on nih only)", "nih (fitted on ieee8023 only)"}
    assert sha256_file(upgraded["bundle"] / check.filename) == check.sha256
    assert metadata.image_quality is not None
    card = (upgraded["bundle"] / "MODEL_CARD.md").read_text()
    assert card.count("## Population") == 1 and "children aged 1-5 at one hospital" in card


def test_the_upgraded_bundle_serves_and_scores_the_population(upgraded, sample_images):
    model = Model.load(upgraded["bundle"], explain=False)
    prediction = model.predict(sample_images["NORMAL"][0], policy="warn")
    assert prediction.input_check.population in ("inside", "outside")
    assert model.metadata.population_check is not None
    assert prediction.input_check.population_threshold == model.metadata.population_check.threshold


def test_the_source_bundle_is_untouched_and_evidence_written(upgraded):
    assert sha256_file(upgraded["source"] / METADATA_FILENAME) == upgraded["before"]
    assert read_metadata(upgraded["source"]).schema_version == 2
    assert not (upgraded["source"] / "population_check.npz").exists()
    evidence = json.loads((upgraded["root"] / "evidence" / "population.json").read_text())
    assert evidence["nih_age_curve"]["11-17"]["films"] == 1  # the NIH child is reported, not fitted
    assert "| Held-out collection | Flagged |" in (upgraded["root"] / "evidence" / "README.md").read_text()


def test_an_unknown_population_must_be_given(upgraded, tiny_run, tiny_dataset, capsys):
    code = main(["population-check", "--bundle", str(upgraded["source"]), "--split", str(tiny_run / "split.csv"),
                 "--data", str(tiny_dataset), "--adults", str(upgraded["adults"]), "--out", str(upgraded["root"] / "x")])  # fmt: skip
    assert code == 2 and "--population" in capsys.readouterr().err
    assert not (upgraded["root"] / "x").exists()


def test_a_missing_collection_is_refused_and_nothing_is_written(upgraded, tiny_run, tiny_dataset, capsys):
    root = upgraded["root"]
    shutil.rmtree(upgraded["adults"] / "ieee8023")
    out = root / "never"
    code = main(["population-check", "--bundle", str(upgraded["source"]), "--split", str(tiny_run / "split.csv"),
              "--data", str(tiny_dataset), "--adults", str(upgraded["adults"]), "--out", str(out),
              "--population", str(root / "population.json")])  # fmt: skip
    assert code == 2 and "ieee8023" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("never.partial").exists()


def test_image_quality_rechooses_each_rule_without_touching_the_models(upgraded, tiny_run, tiny_dataset):
    """`python -m training image-quality`: each rule (contrast, exposure) gets its own action from its own
    validation evidence; the range, the rest of the metadata and every model file stay as they were."""
    source, out = upgraded["bundle"], upgraded["root"] / "quality"
    evidence = upgraded["root"] / "evidence"
    code = main(["image-quality", "--bundle", str(source), "--split", str(tiny_run / "split.csv"),
                 "--data", str(tiny_dataset), "--out", str(out), "--evidence", str(evidence)])  # fmt: skip
    assert code == 0
    before, after = read_metadata(source), read_metadata(out)
    assert before.image_quality is not None and after.image_quality is not None
    assert after.image_quality.exposure_action is not None and after.image_quality.exposure_evidence
    assert (
        "exposure range" in after.image_quality.exposure_evidence and "contrast range" in after.image_quality.evidence
    )
    keep = {"min_dynamic_range", "min_mean", "max_mean", "measured_on"}
    assert after.image_quality.model_dump(include=keep) == before.image_quality.model_dump(include=keep)
    assert after.model_dump(exclude={"image_quality"}) == before.model_dump(exclude={"image_quality"})
    for path in source.iterdir():
        if path.name not in (METADATA_FILENAME, "MODEL_CARD.md"):
            assert sha256_file(out / path.name) == sha256_file(path), path.name
    rules = {row["rule"] for row in json.loads((evidence / "population.json").read_text())["quality"].values()}
    assert rules == {"contrast", "exposure"}
    assert "| gamma 2 | exposure |" in (evidence / "README.md").read_text()
