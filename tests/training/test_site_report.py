"""`python -m training site-report` on real files: what it counts, what it writes, and when it refuses."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pneumonia.bundle import sha256_file
from pneumonia.model import ImageRefusedError, Model
from tests.training.site_support import CLASSES, candidates, colour_photo, truncated_png
from training.cli import main
from training.site_report import verdict


def site_report(bundle: Path, images: Path, out: Path, *flags: str) -> int:
    return main(["site-report", "--bundle", str(bundle), "--images", str(images), "--out", str(out),
                 "--bootstrap", "50", *flags])  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """NORMAL/ and PNEUMONIA/ with 10 generated X-rays each (one in a subfolder), a colour photograph filed as
    NORMAL and a truncated PNG filed as PNEUMONIA: both must be left out, with their reasons."""
    root = tmp_path_factory.mktemp("site")
    for path in candidates(root, per_class=10):
        label = path.parent.name
        target = root / "site" / label / ("sub" if path.stem.endswith("_003") else "") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    colour_photo(root / "site" / "NORMAL" / "holiday.png")
    truncated_png(root / "site" / "PNEUMONIA" / "broken.png")
    return root / "site"


@pytest.fixture(scope="module")
def served(tiny_bundle, site) -> dict[str, object]:
    """What the service's own scoring path says about every file: a Prediction, or the refusal."""
    model = Model.load(tiny_bundle, explain=False)
    answers: dict[str, object] = {}
    for path in sorted(site.rglob("*.*")):
        try:
            answers[path.relative_to(site).as_posix()] = model.predict(path)
        except ImageRefusedError as exc:
            answers[path.relative_to(site).as_posix()] = exc
        except Exception as exc:  # an undecodable file
            answers[path.relative_to(site).as_posix()] = exc
    return answers


@pytest.fixture(scope="module")
def report(tiny_bundle, site, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "r"
    assert site_report(tiny_bundle, site, out, "--gallery", "2") == 0
    return out


def test_the_report_counts_what_the_service_would_answer(report, served, tiny_bundle):
    data = json.loads((report / "report.json").read_text())
    answered = {name: p for name, p in served.items() if hasattr(p, "label")}
    assert data["n"] == {label: sum(n.startswith(label) for n in answered) for label in CLASSES}
    left_out = {r["image"]: r for r in data["refused"]}
    assert set(left_out) == set(served) - set(answered)
    assert {"NORMAL/holiday.png", "PNEUMONIA/broken.png"} <= set(left_out)
    assert "colour picture" in " ".join(left_out["NORMAL/holiday.png"]["reasons"])
    assert left_out["NORMAL/holiday.png"]["code"] == "not_a_chest_xray"
    # the default point's confusion counts are the labels the service gives, against the folders' labels
    default = data["default_operating_point"]
    expected = {"tp": 0, "fn": 0, "tn": 0, "fp": 0}
    for name, prediction in answered.items():
        truth, said = name.split("/")[0], prediction.label
        key = ("t" if said == truth else "f") + ("p" if said == "PNEUMONIA" else "n")
        expected[key] += 1
    assert data["operating_points"][default]["counts"] == expected


def test_every_operating_point_has_four_rates_with_wilson_intervals(report, tiny_bundle):
    data = json.loads((report / "report.json").read_text())
    metadata = Model.load(tiny_bundle, explain=False).metadata
    assert list(data["operating_points"]) == [p.name for p in metadata.operating_points]
    for point in data["operating_points"].values():
        c = point["counts"]
        for metric, (k, n) in {"sensitivity": (c["tp"], c["tp"] + c["fn"]), "specificity": (c["tn"], c["tn"] + c["fp"]),
                               "ppv": (c["tp"], c["tp"] + c["fp"]), "npv": (c["tn"], c["tn"] + c["fn"])}.items():  # fmt: skip
            e = point[metric]
            if n:
                assert e["value"] == pytest.approx(k / n)
                assert 0 <= e["ci_low"] <= e["value"] <= e["ci_high"] <= 1
                assert e["ci_high"] - e["ci_low"] > 0.1  # 10 images per class: Wilson is wide, never a point
    auc = data["roc_auc"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]


def test_html_opens_offline_and_markdown_links_its_pictures(report):
    page = (report / "report.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:|//)", page) and "<script" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    data = json.loads((report / "report.json").read_text())
    shown = data["gallery"]["false_positives"] + data["gallery"]["false_negatives"]
    assert len(sources) == 2 + len(shown)  # ROC, reliability, and the gallery
    markdown = (report / "report.md").read_text()
    for picture in ("roc.png", "reliability.png", *(e["picture"] for e in shown)):
        assert f"({picture})" in markdown and (report / picture).is_file()
    assert data["verdict"] in markdown and data["verdict"] in page.replace("&#x27;", "'")


def test_the_gallery_shows_the_errors_with_overlays(report, served):
    data = json.loads((report / "report.json").read_text())
    gallery = data["gallery"]
    assert gallery["explanations"] is None  # the tiny bundle has model.keras
    wrong = {
        kind: {n for n, p in served.items() if hasattr(p, "label") and p.label != n.split("/")[0] and p.label == said}
        for kind, said in (("false_positives", "PNEUMONIA"), ("false_negatives", "NORMAL"))
    }
    for kind, names in wrong.items():
        assert len(gallery[kind]) == min(2, len(names))
        assert {e["image"] for e in gallery[kind]} <= names
        assert all(e["explanation"] for e in gallery[kind])


def test_without_model_keras_the_gallery_degrades_to_the_images(tiny_bundle, site, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (bundle / "model.keras").unlink()
    assert site_report(bundle, site, tmp_path / "r", "--gallery", "1") == 0
    gallery = json.loads((tmp_path / "r" / "report.json").read_text())["gallery"]
    assert "model.keras" in gallery["explanations"]
    assert all(
        (tmp_path / "r" / e["picture"]).is_file() for e in gallery["false_positives"] + gallery["false_negatives"]
    )


def test_it_is_read_only_and_takes_a_labels_csv(tiny_bundle, site, report, tmp_path):
    before = {p.name: sha256_file(p) for p in tiny_bundle.iterdir() if p.is_file()}
    listed = tmp_path / "labels.csv"
    rows = [
        f"{p.relative_to(site).as_posix()},{p.relative_to(site).parts[0].lower()}" for p in sorted(site.rglob("*.*"))
    ]
    listed.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert site_report(tiny_bundle, site, tmp_path / "r", "--labels", str(listed), "--gallery", "0") == 0
    by_csv = json.loads((tmp_path / "r" / "report.json").read_text())
    by_folder = json.loads((report / "report.json").read_text())
    assert by_csv["n"] == by_folder["n"] and by_csv["operating_points"] == by_folder["operating_points"]
    assert {p.name: sha256_file(p) for p in tiny_bundle.iterdir() if p.is_file()} == before


def test_a_missing_class_folder_is_refused(tiny_bundle, site, tmp_path, capsys):
    images = shutil.copytree(site / "NORMAL", tmp_path / "only" / "NORMAL").parent
    assert site_report(tiny_bundle, images, tmp_path / "r") == 2
    assert "PNEUMONIA/ missing" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,diagnosis\nNORMAL/normal_000.jpeg,NORMAL\n", "columns path and label"),
        ("path,label\nNORMAL/normal_000.jpeg,COVID\n", "labels.csv:2: label 'COVID'"),
        ("path,label\nNORMAL/normal_000.jpeg,0\nNORMAL/nowhere.jpeg,0\n", "labels.csv:3:"),
        ("path,label\nNORMAL/normal_000.jpeg,0\nNORMAL/normal_000.jpeg,0\n", "listed twice"),
        ("path,label\n", "no rows"),
    ],
)
def test_a_bad_labels_csv_is_refused(tiny_bundle, site, tmp_path, capsys, content, message):
    (tmp_path / "labels.csv").write_text(content)
    assert site_report(tiny_bundle, site, tmp_path / "r", "--labels", str(tmp_path / "labels.csv")) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()


def _data(sensitivity, specificity, auc=(0.97, 0.95, 0.99), recorded=(0.95, 0.985), in_sample=False) -> dict:
    e = lambda v: {"value": v[0], "ci_low": v[1], "ci_high": v[2]}  # noqa: E731
    return {
        "default_operating_point": "sensitivity_95", "reference": "validation", "in_sample": in_sample,
        "n": {"NORMAL": 120, "PNEUMONIA": 120}, "roc_auc": e(auc),
        "operating_points": {"sensitivity_95": {"threshold": 0.874, "sensitivity": e(sensitivity),
                                                 "specificity": e(specificity), "recorded_sensitivity": recorded[0],
                                                 "recorded_specificity": recorded[1]}},
    }  # fmt: skip


def test_the_verdict_says_what_to_do():
    shifted = verdict(_data((0.99, 0.97, 1.0), (0.73, 0.67, 0.78)))
    assert "The specificity is below validation's 0.985." in shifted and "calibrate before use" in shifted
    assert "0.73" in shifted and "[0.670, 0.780]" in shifted
    assert "sensitivity is below" not in shifted  # 0.99 is not worse than 0.95
    broken = verdict(_data((0.99, 0.97, 1.0), (0.60, 0.52, 0.67), auc=(0.80, 0.74, 0.86)))
    assert "no threshold can repair" in broken and "calibrate before use" not in broken
    fine = verdict(_data((0.95, 0.92, 0.97), (0.98, 0.95, 0.99)))
    assert "Nothing here is significantly worse" in fine
    small = verdict(_data((0.95, 0.75, 0.99), (0.98, 0.80, 1.0)))
    assert "too few images to tell" in small
    assert "optimistic" in verdict(_data((0.95, 0.92, 0.97), (0.98, 0.95, 0.99), in_sample=True))
