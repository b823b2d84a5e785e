"""`python -m app.score` on real files written to a temporary folder: good, bad, nested, resumed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.score import main
from pneumonia.batch import COLUMNS
from pneumonia.explain import colour_bar_width
from pneumonia.imaging import decode_image
from tests.media import dicom, gray_of, png
from tests.support import SHIPPED_BUNDLE

GOOD = ("a/normal.jpeg", "b/nested/deeper/pneumonia.png", "c/scan.dcm", "c/extensionless_dicom")
BAD = {"corrupt.jpeg": "corrupt_image", "b/text_named.png": "unsupported_format", "empty.jpg": "empty_file"}
IGNORED = ("notes.txt", "c/README")


@pytest.fixture(scope="module")
def archive(tmp_path_factory, sample_images) -> Path:
    root = tmp_path_factory.mktemp("archive")
    normal = sample_images["NORMAL"][0].read_bytes()
    gray = gray_of(sample_images["PNEUMONIA"][0])
    scan = dicom(500 + gray.astype(np.int64) * 12, "MONOCHROME2", slope=1.0, intercept=0.0, center=2000.0, width=3200.0)
    files = {
        "a/normal.jpeg": normal,
        "b/nested/deeper/pneumonia.png": png(Image.fromarray(gray)),
        "c/scan.dcm": scan,
        "c/extensionless_dicom": scan,
        "corrupt.jpeg": normal[: len(normal) // 3],
        "b/text_named.png": b"this is a text file, not an image\n",
        "empty.jpg": b"",
        "notes.txt": b"not an image, and not named like one\n",
        "c/README": b"no extension and no DICOM magic\n",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def score(archive: Path, out: Path, bundle: Path, *extra: str) -> dict[str, dict[str, str]]:
    """Scored under `warn` unless `extra` says otherwise: the tiny bundle's fitted check means nothing
    (tests/support.py), so only the refusal test relies on the check's verdict."""
    policy = () if "--input-check" in extra else ("--input-check", "warn")
    assert (
        main([str(archive), "--out", str(out), "--model-dir", str(bundle), "--batch-size", "2", *policy, *extra]) == 0
    )
    return read(out)


def read(out: Path) -> dict[str, dict[str, str]]:
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a file was scored twice"
    return {r["path"]: r for r in rows}


def test_every_image_gets_a_row_bad_ones_their_error_code(archive, tmp_path, tiny_bundle, loaded_service):
    rows = score(archive, tmp_path / "scores.csv", tiny_bundle)
    assert set(rows) == set(GOOD) | set(BAD)  # recursive; .txt and an extensionless non-DICOM are not images
    point = loaded_service.metadata.operating_point()
    for relative in GOOD:
        row = rows[relative]
        assert row["error_code"] == "" and row["error_message"] == ""
        # the service's own decode, input check and model: what /predict?input_check=warn gives the same bytes
        assessed = loaded_service.model.assess(decode_image((archive / relative).read_bytes()), "warn")
        expected, check = assessed.probability, assessed.check
        assert float(row["probability"]) == pytest.approx(expected, abs=1e-5)
        assert row["label"] == ("PNEUMONIA" if float(row["probability"]) >= point.threshold else "NORMAL")
        assert row["operating_point"] == point.name and float(row["threshold"]) == point.threshold  # lossless
        assert row["input_check_accepted"] == str(check.accepted).lower()
        assert row["input_check_reasons"] == " | ".join(check.reasons)
    assert rows["c/scan.dcm"]["probability"] == rows["c/extensionless_dicom"]["probability"]
    for relative, code in BAD.items():
        row = rows[relative]
        assert row["error_code"] == code and row["error_message"], row
        assert row["probability"] == row["label"] == ""


def test_rerun_skips_finished_rows_and_redoes_a_partial_one(archive, tmp_path, tiny_bundle, capfd):
    out = tmp_path / "scores.csv"
    complete = score(archive, out, tiny_bundle)
    lines = out.read_text().splitlines(keepends=True)
    # as if killed while writing the fourth row: header, three rows, half a line
    out.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    capfd.readouterr()
    resumed = score(archive, out, tiny_bundle)
    assert "resuming: 3 files already scored" in capfd.readouterr().err
    assert resumed == complete
    score(archive, out, tiny_bundle)
    assert "scored 0 files" in capfd.readouterr().err
    assert read(out) == complete


def test_named_operating_point(archive, tmp_path, tiny_bundle, loaded_service):
    points = loaded_service.metadata.operating_points
    chosen = points[-1]
    rows = score(archive, tmp_path / "scores.csv", tiny_bundle, "--operating-point", chosen.name)
    assert {r["operating_point"] for r in rows.values() if not r["error_code"]} == {chosen.name}
    assert main([str(archive), "--out", str(tmp_path / "x.csv"), "--model-dir", str(tiny_bundle),
                 "--operating-point", "no-such-point"]) == 2  # fmt: skip


def test_refuses_a_csv_that_is_not_its_own(archive, tmp_path, tiny_bundle, capfd):
    out = tmp_path / "other.csv"
    out.write_text("name,value\nx,1\n")
    assert main([str(archive), "--out", str(out), "--model-dir", str(tiny_bundle)]) == 2
    assert "not a scores CSV" in capfd.readouterr().err
    assert out.read_text() == "name,value\nx,1\n"


def test_under_refuse_a_refused_file_gets_its_code_and_no_answer(tmp_path, tiny_bundle, sample_images):
    """As POST /predict under the default policy: a colour gradient is refused with not_a_chest_xray, so its
    row has no probability and no label, and --overlays draws nothing for it."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    colour = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    (folder / "gradient.png").write_bytes(png(Image.fromarray(np.ascontiguousarray(colour))))
    overlays = tmp_path / "overlays"
    rows = score(folder, tmp_path / "scores.csv", tiny_bundle, "--input-check", "refuse", "--overlays", str(overlays))
    row = rows["gradient.png"]
    assert row["error_code"] == "not_a_chest_xray" and "colour picture" in row["input_check_reasons"]
    assert row["input_check_accepted"] == "false"
    assert row["probability"] == row["label"] == row["threshold"] == ""
    assert not list(overlays.rglob("*.png"))
    warned = score(folder, tmp_path / "warned.csv", tiny_bundle, "--input-check", "warn")["gradient.png"]
    assert warned["input_check_accepted"] == "false" and warned["label"] in ("NORMAL", "PNEUMONIA")
    assert warned["probability"] and warned["error_code"] == ""


def test_under_refuse_a_film_outside_the_population_gets_its_code_and_no_answer(tmp_path, sample_images):
    """The shipped bundle (the tiny one declares no population): a pediatric sample wrapped as DICOM with
    PatientAge 045Y is refused as POST /predict refuses it, outside_population with no probability and no label;
    the same film tagged 003Y is answered. Under warn the adult film gets both, not accepted."""
    folder = tmp_path / "dicoms"
    folder.mkdir()
    stored = 500 + gray_of(sample_images["NORMAL"][0]).astype(np.int64) * 12
    for name, age in (("adult.dcm", "045Y"), ("child.dcm", "003Y")):
        data = dicom(stored, "MONOCHROME2", slope=1.0, intercept=0.0, center=2000.0, width=3200.0, PatientAge=age)
        (folder / name).write_bytes(data)
    rows = score(folder, tmp_path / "scores.csv", SHIPPED_BUNDLE, "--input-check", "refuse")
    adult, child = rows["adult.dcm"], rows["child.dcm"]
    assert adult["error_code"] == "outside_population" and "45 years" in adult["input_check_reasons"], adult
    assert adult["input_check_accepted"] == "false"
    assert adult["probability"] == adult["label"] == adult["threshold"] == ""
    assert child["error_code"] == "" and child["label"] in ("NORMAL", "PNEUMONIA") and child["probability"], child
    warned = score(folder, tmp_path / "warned.csv", SHIPPED_BUNDLE, "--input-check", "warn")["adult.dcm"]
    assert warned["input_check_accepted"] == "false" and warned["error_code"] == ""
    assert warned["label"] in ("NORMAL", "PNEUMONIA") and warned["probability"]


def test_overlays_one_png_per_decodable_image(archive, tmp_path, tiny_bundle):
    overlays = tmp_path / "overlays"
    rows = score(archive, tmp_path / "scores.csv", tiny_bundle, "--overlays", str(overlays))
    written = sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png"))
    assert written == sorted(f"{r}.png" for r in GOOD)
    for relative in GOOD:
        image = decode_image((archive / relative).read_bytes())
        assert Image.open(overlays / f"{relative}.png").size == (
            image.width + colour_bar_width(image.height),
            image.height,
        )
    assert set(rows) == set(GOOD) | set(BAD)


def test_module_entry_point_runs(archive, tmp_path, tiny_bundle):
    """`python -m app.score` as a researcher runs it: a fresh process, progress and summary on stderr."""
    out = tmp_path / "scores.csv"
    result = subprocess.run(
        [sys.executable, "-m", "app.score", str(archive / "a"), "--out", str(out), "--model-dir", str(tiny_bundle)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESEARCH USE ONLY" in result.stderr.upper() and "1/1 files" in result.stderr
    assert set(read(out)) == {"normal.jpeg"}
    bad = subprocess.run([sys.executable, "-m", "app.score", str(archive / "notes.txt"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_parallel_workers_write_the_same_rows_in_the_same_order(archive, tmp_path, tiny_bundle):
    serial = tmp_path / "serial.csv"
    parallel = tmp_path / "parallel.csv"
    assert main([str(archive), "--out", str(serial), "--model-dir", str(tiny_bundle), "--threads", "1"]) == 0
    assert main([str(archive), "--out", str(parallel), "--model-dir", str(tiny_bundle), "--threads", "3",
                 "--batch-size", "1"]) == 0  # fmt: skip
    assert serial.read_text() == parallel.read_text()


def test_with_an_audit_log_every_file_gets_one_line_without_its_path(archive, tmp_path, tiny_bundle, monkeypatch):
    import hashlib
    import json

    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("PNEUMONIA_AUDIT_LOG", str(audit))
    rows = score(archive, tmp_path / "scores.csv", tiny_bundle)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == len(rows) and {line["endpoint"] for line in lines} == {"score"}
    digests = {line.get("image_sha256") for line in lines}
    assert hashlib.sha256((archive / "a/normal.jpeg").read_bytes()).hexdigest() in digests
    assert "normal.jpeg" not in audit.read_text()  # the file's path is never written
    (run_id,) = {line["request_id"] for line in lines}  # one id for the run's lines
    assert run_id.startswith("score-") and all(line["duration_ms"] is not None for line in lines)
