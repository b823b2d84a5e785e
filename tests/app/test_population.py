"""The population check's parts, in-process: DICOM tags to an age, the tag rules, the learned detector's file,
and which evidence wins when the tags and the learned check disagree."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import BundleError, Population, PopulationCheckSpec
from pneumonia.errors import ErrorCode
from pneumonia.imaging import DicomTags, decode_image, parse_age_string
from pneumonia.input_check import InputChecker, exposure
from pneumonia.population import PopulationDetector, describe_age, load_population_detector, tag_findings
from tests.media import dicom, gray_of

CHILDREN = Population(age_min_years=1, age_max_years=5, views=["AP"], modality="frontal chest radiographs", sites=1,
                      source="test")  # fmt: skip


@pytest.mark.parametrize(
    ("value", "years"),
    [("045Y", 45.0), ("003Y", 3.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("010D", 10 / 365.25),
     (None, None), ("", None), ("45Y", None), ("045X", None), ("0A5Y", None)],
)  # fmt: skip
def test_dicom_age_strings(value, years):
    parsed = parse_age_string(value)
    assert parsed == pytest.approx(years) if years is not None else parsed is None


def _tags_of(sample_images, **tags) -> DicomTags:
    stored = 500 + gray_of(sample_images["NORMAL"][0]).astype(np.int64) * 12
    image = decode_image(dicom(stored, "MONOCHROME2", slope=1.0, intercept=0.0, center=2000.0, width=3200.0, **tags))
    assert image.dicom is not None
    return image.dicom


def test_decoding_reads_the_tags_and_keeps_no_dates(sample_images):
    tags = _tags_of(sample_images, PatientAge="004Y", ViewPosition="ap", BodyPartExamined="Chest")
    assert tags == DicomTags(
        modality="CR", view_position="AP", body_part="CHEST", age_years=4.0, age_source="PatientAge"
    )
    born = _tags_of(sample_images, PatientBirthDate="20200301", AcquisitionDate="20230301")
    assert born.age_years == pytest.approx(3.0, abs=0.01) and born.age_source == "PatientBirthDate and StudyDate"
    assert "2020" not in repr(born)  # reduced to an age; the date itself is not kept
    assert _tags_of(sample_images, PatientBirthDate="garbage", StudyDate="20230301").age_years is None
    assert decode_image(_png()).dicom is None


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_tag_rules_and_their_codes():
    codes = lambda tags: [f.code for f in tag_findings(tags, CHILDREN)]  # noqa: E731
    assert codes(DicomTags()) == []  # nothing known, nothing said
    assert codes(DicomTags(modality="DX", view_position="PA", body_part="THORAX AP", age_years=5.9)) == []
    assert codes(DicomTags(age_years=6.0, age_source="PatientAge")) == [ErrorCode.OUTSIDE_POPULATION]
    assert codes(DicomTags(age_years=0.5, age_source="PatientAge")) == [ErrorCode.OUTSIDE_POPULATION]
    assert codes(DicomTags(view_position="RL")) == [ErrorCode.NOT_A_CHEST_XRAY]
    assert codes(DicomTags(body_part="ABDOMEN")) == [ErrorCode.NOT_A_CHEST_XRAY]
    assert codes(DicomTags(modality="MR")) == [ErrorCode.NOT_A_CHEST_XRAY]
    assert tag_findings(DicomTags(age_years=45.0, age_source="PatientAge"), None) == []  # no population: no age rule


def test_ages_are_described_without_exact_old_ages():
    assert describe_age(3.4) == "3 years" and describe_age(0.5) == "6 months" and describe_age(95) == "over 89 years"


def test_the_detector_round_trips_and_its_checksum_is_verified(tmp_path):
    rng = np.random.default_rng(0)
    detector = PopulationDetector(rng.normal(size=8), rng.uniform(1, 2, 8), rng.normal(size=8), 0.3, 0.7)
    detector.save(tmp_path / "population_check.npz")
    features = rng.normal(size=(5, 8))
    from pneumonia.bundle import sha256_file

    spec = PopulationCheckSpec(sha256=sha256_file(tmp_path / "population_check.npz"), threshold=0.7, fitted_on="x",
                               threshold_chosen_on="x", validation_acceptance=0.99, method="x")  # fmt: skip
    loaded = load_population_detector(tmp_path, spec)
    assert loaded is not None
    np.testing.assert_allclose(loaded.probability(features), detector.probability(features))
    (tmp_path / "population_check.npz").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_population_detector(tmp_path, spec)


def test_a_recorded_age_beats_the_learned_check(loaded_service, sample_images):
    """A detector that calls everything an adult: a JPEG is refused as outside the population, a DICOM of a
    three-year-old is answered (the tags are evidence, the learned check a guess)."""
    model = loaded_service.model
    size = sum(s.shape[1] for s in model.classifier.run(model._model_input(decode_image(_png())))[1])
    always_adult = PopulationDetector(np.zeros(size), np.ones(size), np.zeros(size), 50.0, 0.5)
    checker = InputChecker(model.checker.model, population=CHILDREN, population_detector=always_adult)
    stored = 500 + gray_of(sample_images["NORMAL"][0]).astype(np.int64) * 12
    child = decode_image(dicom(stored, "MONOCHROME2", slope=1.0, intercept=0.0, center=2000.0, width=3200.0,
                               PatientAge="003Y"))  # fmt: skip
    jpeg = decode_image(sample_images["NORMAL"][0].read_bytes())
    verdicts = {}
    for name, image in (("dicom", child), ("jpeg", jpeg)):
        batch = model._model_input(image)
        check, _ = checker.inspect(image, batch[0, :, :, 0], "refuse")
        _, statistics = model.classifier.run(batch)
        checker.score(check, statistics)
        verdicts[name] = check
    assert verdicts["dicom"].population == "inside" and verdicts["dicom"].refusal_code != ErrorCode.OUTSIDE_POPULATION
    assert verdicts["jpeg"].population == "outside" and not verdicts["jpeg"].accepted
    assert any("outside the model's population" in reason for reason in verdicts["jpeg"].reasons)


def test_exposure_matches_numpy_percentiles():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (192, 192)).astype(np.float32)
    spread, mean = exposure(gray)
    low, high = np.percentile(gray.astype(np.uint8), [5, 95])
    assert abs(spread - (high - low)) <= 2 and mean == pytest.approx(gray.mean(), abs=0.5)
