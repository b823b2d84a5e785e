"""Fit the population check and the image-quality range for a bundle, and measure how they generalise.

The population check (pneumonia/population.py) is a logistic regression on the input check's channel
statistics, from the same ONNX run that gives the probability: the bundle's training films (label 0) against
adult films (label 1) from two collections, NIH ChestX-ray14 and the ieee8023 COVID-19 collection (their
README: ../shared/data/adult_cxr). Adults only (age >= 18): NIH's children are reported, not fitted.

Collections differ in more than age: resolution, JPEG quality, borders, burned-in text and crops. So that the
check learns "adult" rather than "this archive", every fitted film (both classes) is also fitted in a degraded
copy with a random resolution, JPEG quality, border, text overlay and crop (`degrade`). Measured on the shipped
model while choosing the recipe (at a 99% threshold; not kept in results/): without the copies, 80-86% of
degraded validation films were accepted, with them 97-98%, and held-out adult collections were still flagged.
results/population has the shipped check's own figures.

Generalisation is measured by fitting on one adult collection and testing on the other, both ways, and the
NIH age curve comes from patient-level cross-fitting (each NIH film scored by a check fitted without its
patient). The threshold keeps `VALIDATION_ACCEPTANCE` of the clean validation films.

Image quality: the exposure (mean gray level) and contrast (5th-95th percentile spread) of the training films
set the accepted range; whether a film outside it is refused or warned about is decided per rule from the
validation films perturbed for that rule: reduced contrast (the stress check's weak point) for the contrast rule,
gamma and gray-level shifts for the exposure rule (`quality_evidence`, `choose_quality_action`).
`refit_quality_actions` re-chooses them for an existing bundle (`python -m training image-quality`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from pneumonia.bundle import (
    BundleMetadata,
    ImageQualitySpec,
    Population,
    PopulationCheckSpec,
    QualityAction,
    read_metadata,
    sha256_file,
)
from pneumonia.imaging import decode_image, to_model_input
from pneumonia.input_check import channel_features, exposure
from pneumonia.labels import positive_mask
from pneumonia.population import PopulationDetector
from training.errors import TrainingError
from training.stress import Perturbation

log = logging.getLogger(__name__)

POPULATION_CHECK_FILENAME = PopulationCheckSpec.model_fields["filename"].default
VALIDATION_ACCEPTANCE = 0.995  # >= 99% asked; 99.5% because the refusals add up: 0.99 left 97.5% of validation films answered after every check
REGULARISATION_C = 0.1  # held-out collection flagged 0.94 (ieee) / 0.99 (NIH) at C=0.1, 0.92 / 0.99 at C=0.01
ADULT_AGE = 18
CROSS_FIT_FOLDS = 5
QUALITY_QUANTILE = (
    0.0025  # the accepted range: the training films' 0.25%-99.75% quantiles (0.5% refused 0.5% of validation)
)
CONTRAST_FACTORS = (0.4, 0.5, 0.6, 0.7)
# The exposure rule's evidence: gamma > 1 darkens, < 1 brightens (the stress check's gamma_dark 1.6 and gamma_bright
# 0.6, and one step further each way), and a uniform shift of the gray levels.
EXPOSURE_GAMMAS = (1.6, 2.0, 0.6, 0.45)
EXPOSURE_SHIFTS = (-40, 40)
WORSE_BY = 0.2  # a rule refuses when the films it flags lose more than this in specificity or sensitivity
# The shipped model's training population, from the dataset card (../shared/data/README.md).
KERMANY_POPULATION = Population(
    age_min_years=1,
    age_max_years=5,
    views=["AP"],
    modality="frontal chest radiographs",
    sites=1,
    source="Kermany et al. 2018 (Cell; Mendeley Data v2): Guangzhou Women and Children's Medical Center",
)


def declared_population(dataset: str) -> Population | None:
    """The population a bundle declares, from its dataset's name: known for the project's dataset only, so a
    model trained on other data declares nothing rather than a population it does not have."""
    return KERMANY_POPULATION if "Kermany" in dataset else None


class PopulationCheckError(TrainingError):
    pass


@dataclass(frozen=True)
class AdultFilm:
    path: Path
    collection: str
    patient: str
    age: float | None


def adult_films(adult_dir: Path) -> list[AdultFilm]:
    """The NIH and ieee8023 films with their ages (labels.csv / metadata.csv of each collection)."""
    films = []
    for collection, table in (("nih", "labels.csv"), ("ieee8023", "metadata.csv")):
        path = Path(adult_dir) / collection / table
        if not path.is_file():
            raise PopulationCheckError(f"{path} is missing: the population check needs both adult collections")
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                age = float(row["age"]) if row.get("age") else None
                films.append(AdultFilm(path.parent / row["path"], collection, row["patient_id"], age))
    return films


def degrade(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy with what differs between archives: resolution, border, burned-in text, crop, JPEG quality."""
    image = Image.fromarray(gray)
    scale = int(rng.integers(128, 700)) / max(image.size)
    image = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))))
    if rng.random() < 0.5:
        border = int(rng.integers(2, max(3, image.width // 12)))
        canvas = Image.new("L", (image.width + 2 * border, image.height + 2 * border), int(rng.choice([0, 255])))
        canvas.paste(image, (border, border))
        image = canvas
    if rng.random() < 0.5:
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            xy = (int(rng.integers(0, image.width - 10)), int(rng.integers(0, image.height - 10)))
            draw.text(xy, str(rng.choice(["R", "L", "AP", "PA", "PORTABLE", "SUPINE", "->"])),
                      fill=int(rng.choice([0, 255])))  # fmt: skip
    if rng.random() < 0.5:
        w, h = image.size
        cut = rng.uniform(0, 0.08, 4)
        image = image.crop((int(cut[0] * w), int(cut[1] * h), w - int(cut[2] * w), h - int(cut[3] * h)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(50, 96)))
    return decode_image(buffer.getvalue()).pixels


class FeatureReader:
    """Model inputs -> (probability, the population check's features) through a bundle's served ONNX graph."""

    def __init__(self, bundle_dir: Path, batch_size: int = 64):
        import onnxruntime as ort

        from pneumonia.bundle import ONNX_FILENAME

        self.metadata = read_metadata(bundle_dir)
        if self.metadata.input_check is None:
            raise PopulationCheckError(f"{bundle_dir}: no input check; run `python -m training input-check` first")
        self.session = ort.InferenceSession(str(bundle_dir / ONNX_FILENAME), providers=["CPUExecutionProvider"])
        self.outputs = [self.metadata.onnx_output_name, *self.metadata.input_check.statistics_outputs]
        self.batch_size = batch_size

    def read(self, grays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = [], []
        size = self.metadata.input_size
        for start in range(0, len(grays), self.batch_size):
            batch = np.stack([to_model_input(g, size) for g in grays[start : start + self.batch_size]])
            probability, *statistics = self.session.run(self.outputs, {self.metadata.onnx_input_name: batch})
            probabilities.append(np.asarray(probability).reshape(len(batch), -1)[:, 0])
            features.append(np.concatenate([channel_features(np.asarray(s)) for s in statistics], axis=1))
        return np.concatenate(probabilities), np.concatenate(features)


def load_grays(paths: Sequence[Path]) -> list[np.ndarray]:
    return [decode_image(Path(p).read_bytes()).pixels for p in paths]


def fit_detector(pediatric: np.ndarray, adult: np.ndarray, validation: np.ndarray) -> PopulationDetector:
    """Class-balanced L2 logistic regression on standardised features; threshold on clean validation films."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([pediatric, adult])
    labels = np.r_[np.zeros(len(pediatric)), np.ones(len(adult))]
    center, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    fitted = LogisticRegression(C=REGULARISATION_C, max_iter=3000, class_weight="balanced")
    fitted.fit((features - center) / scale, labels)
    provisional = PopulationDetector(
        center, scale, fitted.coef_[0].astype(np.float64), float(fitted.intercept_[0]), 1.0
    )
    # "higher": the threshold is a validation score itself, so at least VALIDATION_ACCEPTANCE of them lie at or below it
    threshold = float(np.quantile(provisional.probability(validation), VALIDATION_ACCEPTANCE, method="higher"))
    return PopulationDetector(provisional.center, provisional.scale, provisional.coef, provisional.intercept, threshold)


@dataclass
class Features:
    """Clean and degraded features of every film the check is fitted or judged on."""

    train: np.ndarray
    train_degraded: np.ndarray
    val: np.ndarray
    val_degraded: np.ndarray
    val_probability: np.ndarray
    val_labels: np.ndarray
    adults: np.ndarray
    adults_degraded: np.ndarray
    adult_probability: np.ndarray
    films: list[AdultFilm]


def read_features(
    reader: FeatureReader, train_grays: list[np.ndarray], val_grays: list[np.ndarray], val_labels: np.ndarray,
    films: list[AdultFilm], seed: int,
) -> Features:  # fmt: skip
    rng = np.random.default_rng(seed)

    def both(grays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probability, clean = reader.read(grays)
        _, degraded = reader.read([degrade(g, rng) for g in grays])
        return probability, clean, degraded

    log.info("population check: features of %d training, %d validation, %d adult films (clean and degraded)",
             len(train_grays), len(val_grays), len(films))  # fmt: skip
    _, train_clean, train_degraded = both(train_grays)
    val_probability, val_clean, val_degraded = both(val_grays)
    adult_probability, adult_clean, adult_degraded = both(load_grays([f.path for f in films]))
    return Features(train_clean, train_degraded, val_clean, val_degraded, val_probability, val_labels,
                    adult_clean, adult_degraded, adult_probability, films)  # fmt: skip


def _adult_rows(features: Features, keep: np.ndarray) -> np.ndarray:
    return np.concatenate([features.adults[keep], features.adults_degraded[keep]])


def _fit(features: Features, adult_keep: np.ndarray) -> PopulationDetector:
    pediatric = np.concatenate([features.train, features.train_degraded])
    return fit_detector(pediatric, _adult_rows(features, adult_keep), features.val)


def generalisation(features: Features) -> dict[str, object]:
    """Held-out collections (fit on one, flag the other) and NIH cross-fitted by patient."""
    collections = np.array([f.collection for f in features.films])
    ages = np.array([np.nan if f.age is None else f.age for f in features.films])
    adult = ages >= ADULT_AGE
    held_out: dict[str, float] = {}
    held_out_degraded: dict[str, float] = {}
    for fitted_on, judged in (("nih", "ieee8023"), ("ieee8023", "nih")):
        detector = _fit(features, adult & (collections == fitted_on))
        # judged on the held-out collection's films, as they are and in their degraded copies (other resolution,
        # JPEG quality, border, text, crop): a check that learned an archive's look would lose the copies
        for table, rows in ((held_out, features.adults), (held_out_degraded, features.adults_degraded)):
            flagged = detector.probability(rows[collections == judged]) > detector.threshold
            table[f"{judged} (fitted on {fitted_on} only)"] = round(float(flagged.mean()), 4)
    # every NIH film scored by a check fitted on both collections without that film's patient
    patients = np.array([f.patient if f.collection == "nih" else "" for f in features.films])
    nih_patients = sorted({p for p in patients if p})
    rng = np.random.default_rng(0)
    folds = {p: i % CROSS_FIT_FOLDS for i, p in enumerate(rng.permutation(nih_patients))}
    out_of_fold = np.full(len(features.films), np.nan)
    thresholds = []
    for fold in range(CROSS_FIT_FOLDS):
        held = np.array([folds.get(p, -1) == fold for p in patients])
        detector = _fit(features, adult & ~held)
        out_of_fold[held] = detector.probability(features.adults[held])
        thresholds.append(detector.threshold)
    nih = collections == "nih"
    flagged = out_of_fold > np.median(thresholds)
    bands = {"4-10": (4, 11), "11-17": (11, 18), "18 and over": (18, 200)}
    age_curve = {
        name: {"films": int(np.sum(nih & (ages >= lo) & (ages < hi))),
               "flagged": round(float(flagged[nih & (ages >= lo) & (ages < hi)].mean()), 4)}
        for name, (lo, hi) in bands.items()
    }  # fmt: skip
    return {"held_out": held_out, "held_out_degraded": held_out_degraded, "nih_age_curve": age_curve,
            "nih_flagged_cross_fitted": flagged[nih].tolist()}  # fmt: skip


def quality_limits(train_grays: list[np.ndarray], size: tuple[int, int]) -> tuple[float, float, float]:
    """(min dynamic range, min mean, max mean) over the training films' model inputs."""
    measured = np.array([exposure(to_model_input(g, size)[..., 0]) for g in train_grays])
    return (
        float(np.quantile(measured[:, 0], QUALITY_QUANTILE)),
        float(np.quantile(measured[:, 1], QUALITY_QUANTILE)),
        float(np.quantile(measured[:, 1], 1 - QUALITY_QUANTILE)),
    )


def _gamma(gamma: float) -> Perturbation:
    def apply(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(255.0 * (gray / 255.0) ** gamma, 0, 255).astype(np.uint8)

    return apply


def _shift(delta: int) -> Perturbation:
    def apply(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(gray.astype(np.int16) + delta, 0, 255).astype(np.uint8)

    return apply


def quality_perturbations() -> dict[str, tuple[Literal["contrast", "exposure"], Perturbation]]:
    """Perturbation name -> (the rule it tests, the perturbation): reduced contrast for the contrast rule,
    gamma and gray-level shifts for the exposure rule."""
    from training.stress import contrast

    rows: dict[str, tuple[Literal["contrast", "exposure"], Perturbation]] = {
        f"contrast x{factor:g}": ("contrast", contrast(factor)) for factor in CONTRAST_FACTORS
    }
    rows |= {f"gamma {gamma:g}": ("exposure", _gamma(gamma)) for gamma in EXPOSURE_GAMMAS}
    rows |= {f"gray levels {delta:+d}": ("exposure", _shift(delta)) for delta in EXPOSURE_SHIFTS}
    return rows


def quality_evidence(
    reader: FeatureReader, val_grays: list[np.ndarray], labels: np.ndarray, limits: tuple[float, float, float]
) -> dict[str, object]:
    """The validation films perturbed for each rule (reduced contrast for the contrast rule, gamma and gray-level
    shifts for the exposure rule): how many that rule flags, and the model's specificity and sensitivity at its
    default operating point on the flagged and the unflagged ones."""
    threshold = reader.metadata.operating_point().threshold
    size = reader.metadata.input_size
    rows: dict[str, object] = {}
    for name, (rule, perturbation) in quality_perturbations().items():
        perturbed = [perturbation(g, np.random.default_rng(0)) for g in val_grays]
        probability, _ = reader.read(perturbed)
        measured = np.array([exposure(to_model_input(g, size)[..., 0]) for g in perturbed])
        if rule == "contrast":
            flagged = measured[:, 0] < limits[0]
        else:
            flagged = (measured[:, 1] < limits[1]) | (measured[:, 1] > limits[2])
        predicted = positive_mask(probability, threshold)
        row: dict[str, float | int | str] = {"rule": rule, "flagged": round(float(flagged.mean()), 4)}
        for part, mask in (("flagged", flagged), ("unflagged", ~flagged)):
            normal, pneumonia = mask & (labels == 0), mask & (labels == 1)
            if normal.any():
                row[f"specificity_{part}"] = round(float(np.mean(~predicted[normal])), 4)
            if pneumonia.any():
                row[f"sensitivity_{part}"] = round(float(np.mean(predicted[pneumonia])), 4)
        rows[name] = row
    return rows


def choose_quality_action(
    evidence: dict[str, object],
    clean_specificity: float,
    clean_sensitivity: float = 1.0,
    rule: Literal["contrast", "exposure"] = "contrast",
) -> tuple[QualityAction, str]:
    """For one rule: refuse when the films it flags are answered much worse than clean ones (specificity or
    sensitivity down by more than WORSE_BY, averaged over that rule's perturbations that flag any), else warn.
    Rows without a `rule` (evidence written before the exposure rule had its own) are the contrast rule's."""
    rows = [r for r in evidence.values() if isinstance(r, dict) and r.get("rule", "contrast") == rule]
    specificity = [r["specificity_flagged"] for r in rows if "specificity_flagged" in r]
    sensitivity = [r["sensitivity_flagged"] for r in rows if "sensitivity_flagged" in r]
    what = "reduced contrast" if rule == "contrast" else "gamma or gray levels changed"
    if not specificity and not sensitivity:
        return "warn", f"no validation film with {what} fell outside the {rule} range"
    spec = float(np.mean(specificity)) if specificity else clean_specificity
    sens = float(np.mean(sensitivity)) if sensitivity else clean_sensitivity
    worse = spec < clean_specificity - WORSE_BY or sens < clean_sensitivity - WORSE_BY
    action: QualityAction = "refuse" if worse else "warn"
    return action, (
        f"validation films with {what} that fall outside the {rule} range: specificity {spec:.2f}, sensitivity "
        f"{sens:.2f} at the default operating point (clean validation {clean_specificity:.2f}, "
        f"{clean_sensitivity:.2f}); see results/population"
    )


def quality_actions(evidence: dict[str, object], metadata: BundleMetadata) -> dict[str, str]:
    """Each rule's action and its evidence in words (ImageQualitySpec's fields), against clean validation."""
    clean = metadata.validation.metrics
    specificity, sensitivity = clean["specificity"].value, clean["sensitivity"].value
    action, why = choose_quality_action(evidence, specificity, sensitivity, "contrast")
    exposure_action, exposure_why = choose_quality_action(evidence, specificity, sensitivity, "exposure")
    return {"action": action, "evidence": why, "exposure_action": exposure_action, "exposure_evidence": exposure_why}


def refit_quality_actions(bundle_dir: Path, val: list) -> tuple[ImageQualitySpec, dict[str, object]]:
    """For a schema-3 bundle: the quality rules' evidence re-measured on the validation films through the bundle's
    ONNX model, at the range the bundle already records (its training films' quantiles), and each rule's action
    chosen from it. Returns the new spec and the evidence."""
    reader = FeatureReader(bundle_dir)
    spec = reader.metadata.image_quality
    if spec is None:
        raise PopulationCheckError(f"{bundle_dir}: no image-quality range (schema < 3); run population-check")
    limits = (spec.min_dynamic_range, spec.min_mean, spec.max_mean)
    val_grays = load_grays([s.path for s in val])
    quality = quality_evidence(reader, val_grays, np.array([s.label for s in val]), limits)
    updated = spec.model_copy(update=quality_actions(quality, reader.metadata))
    return ImageQualitySpec.model_validate(updated.model_dump()), quality


def update_quality_evidence(evidence_dir: Path, quality: dict[str, object]) -> None:
    """Replace the `quality` entry of an evidence folder's population.json and re-render its README; the
    population check's own numbers stay as they were measured."""
    evidence = json.loads((Path(evidence_dir) / "population.json").read_text())
    write_evidence(Path(evidence_dir), evidence | {"quality": quality})


def fit_population_check(
    bundle_dir: Path, train: list, val: list, adult_dir: Path, staging: Path, *, seed: int = 0
) -> tuple[PopulationCheckSpec, ImageQualitySpec, dict[str, object]]:
    """Fit and threshold the population check and the quality range for the bundle in `bundle_dir`; write the
    check's file into `staging`. Returns the two metadata records and the evidence (for results/)."""
    reader = FeatureReader(bundle_dir)
    films = adult_films(adult_dir)
    # decoded once: the features, the quality range and its evidence all read the same films
    train_grays, val_grays = load_grays([s.path for s in train]), load_grays([s.path for s in val])
    features = read_features(reader, train_grays, val_grays, np.array([s.label for s in val]), films, seed)
    ages = np.array([np.nan if f.age is None else f.age for f in films])
    detector = _fit(features, ages >= ADULT_AGE)
    detector.save(staging / POPULATION_CHECK_FILENAME)
    evidence = generalisation(features)
    acceptance = float(np.mean(detector.probability(features.val) <= detector.threshold))
    degraded_acceptance = float(np.mean(detector.probability(features.val_degraded) <= detector.threshold))
    evidence |= {"validation_acceptance": acceptance, "degraded_validation_acceptance": degraded_acceptance}
    log.info("population check: threshold %.3f; %s", detector.threshold, evidence["held_out"])
    adults = int(np.sum(ages >= ADULT_AGE))
    spec = PopulationCheckSpec(
        sha256=sha256_file(staging / POPULATION_CHECK_FILENAME),
        threshold=detector.threshold,
        fitted_on=f"{len(train)} training films against {adults} adult films (NIH ChestX-ray14 and ieee8023, age >= "
        f"{ADULT_AGE}), each also in a degraded copy (resolution, JPEG quality, border, text, crop)",
        threshold_chosen_on=f"{len(val)} validation films, {VALIDATION_ACCEPTANCE:.1%} quantile",
        validation_acceptance=acceptance,
        held_out=evidence["held_out"],
        method=f"class-balanced L2 logistic regression (C={REGULARISATION_C}) on the input check's channel "
        "mean/std features of every depth, from the same ONNX run as the probability",
    )
    limits = quality_limits(train_grays, reader.metadata.input_size)
    quality = quality_evidence(reader, val_grays, features.val_labels, limits)
    evidence["quality"] = quality
    quality_spec = ImageQualitySpec(
        min_dynamic_range=limits[0], min_mean=limits[1], max_mean=limits[2],
        measured_on=f"{len(train)} training films' model inputs, {QUALITY_QUANTILE:.1%}-{1 - QUALITY_QUANTILE:.1%} "
        "quantiles", **quality_actions(quality, reader.metadata),
    )  # fmt: skip
    evidence["external_test"] = external_test(features, reader, evidence)
    return spec, quality_spec, evidence


def external_test(features: Features, reader: FeatureReader, evidence: dict[str, object]) -> dict[str, object]:
    """What the model answers on NIH films, before any check and on the films the population check (cross-fitted
    by patient) would let through; ROC-AUC and sensitivity/specificity at the default point, by age band."""
    from sklearn.metrics import roc_auc_score

    nih = np.array([f.collection == "nih" for f in features.films])
    films = [f for f in features.films if f.collection == "nih"]
    labels = np.array([int("PNEUMONIA" in str(f.path.parent.name)) for f in films])
    ages = np.array([f.age for f in films], dtype=float)
    probability = features.adult_probability[nih]
    answered = ~np.array(evidence["nih_flagged_cross_fitted"], dtype=bool)
    threshold = reader.metadata.operating_point().threshold
    predicted = positive_mask(probability, threshold)

    def summary(mask: np.ndarray) -> dict[str, float | int | None]:
        y = labels[mask]
        if len(y) == 0:
            return {"films": 0}
        both = len(set(y.tolist())) == 2
        return {
            "films": int(len(y)),
            "roc_auc": round(float(roc_auc_score(y, probability[mask])), 3) if both else None,
            "sensitivity": round(float(predicted[mask][y == 1].mean()), 3) if (y == 1).any() else None,
            "specificity": round(float((~predicted[mask])[y == 0].mean()), 3) if (y == 0).any() else None,
        }

    bands = {"all": (0, 200), "4-17": (0, 18), "18 and over": (18, 200)}
    return {
        "operating_point": reader.metadata.default_operating_point,
        "threshold": threshold,
        "refused_by_population_check": int((~answered).sum()),
        "films": len(films),
        "before": {name: summary((ages >= lo) & (ages < hi)) for name, (lo, hi) in bands.items()},
        "after": {name: summary(answered & (ages >= lo) & (ages < hi)) for name, (lo, hi) in bands.items()},
    }


def write_evidence(out_dir: Path, evidence: dict[str, object]) -> None:
    """population.json and README.md (every number in it generated from the JSON, never retyped)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in evidence.items() if k != "nih_flagged_cross_fitted"}
    (out_dir / "population.json").write_text(json.dumps(public, indent=2) + "\n")
    (out_dir / "README.md").write_text(evidence_markdown(public))


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def evidence_markdown(evidence: dict) -> str:
    degraded = evidence.get("held_out_degraded", {})  # absent from evidence written before it was measured
    held_out = "\n".join(
        f"| {name} | {share:.1%} | {f'{degraded[name]:.1%}' if name in degraded else 'not measured'} |"
        for name, share in evidence["held_out"].items()
    )
    ages = "\n".join(
        f"| {band} | {row['films']} | {row['flagged']:.1%} |" for band, row in evidence["nih_age_curve"].items()
    )
    test = evidence["external_test"]
    rows = []
    for when in ("before", "after"):
        for band, row in test[when].items():
            rows.append(f"| {when} | {band} | {row['films']} | {_cell(row.get('roc_auc'))} | "
                        f"{_cell(row.get('sensitivity'))} | {_cell(row.get('specificity'))} |")  # fmt: skip
    quality = "\n".join(
        f"| {name} | {row.get('rule', 'contrast')} | {row['flagged']:.1%} | {_cell(row.get('specificity_flagged'))} | "
        f"{_cell(row.get('specificity_unflagged'))} | {_cell(row.get('sensitivity_flagged'))} | "
        f"{_cell(row.get('sensitivity_unflagged'))} |"
        for name, row in evidence["quality"].items()
    )
    return f"""# Whose X-ray is it: the population check and the external test

Generated by `python -m training population-check --bundle models/default --split results/final192/split.csv
--data ../shared/data/chest_xray --adults ../shared/data/adult_cxr --out <bundle> --evidence results/population`
(training/population.py). Research use only.

## Generalisation to an adult collection the check never saw
Fitted on the training films against one adult collection (adults only, each film also degraded), then
the share of the other collection's films flagged, as they are and in a degraded copy (random resolution, JPEG
quality, border, text and crop):

| Held-out collection | Flagged | Flagged, degraded copies |
|---|---|---|
{held_out}

Validation films accepted: {evidence["validation_acceptance"]:.1%} clean, {evidence["degraded_validation_acceptance"]:.1%}
degraded (random resolution, JPEG quality, border, text and crop).

## NIH age curve (patient-level cross-fitting: each film judged by a check fitted without its patient)
| Age band | Films | Flagged |
|---|---|---|
{ages}

## External test on NIH ChestX-ray14 (1,000 frontal films, mostly adults)
What the model answers at its default operating point `{test["operating_point"]}` (threshold
{test["threshold"]:.4f}), before any check and on the films the population check lets through
({test["refused_by_population_check"]} of {test["films"]} refused). Labels are NIH's text-mined ones.

| | Ages | Films | ROC-AUC | Sensitivity | Specificity |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The model is not for adults: its ranking of adult films is no better than chance, and nearly every normal
adult would be called PNEUMONIA. Unseen pediatric sites are untested too (docs: a new site).

## Image quality: validation films perturbed for each rule
Reduced contrast for the contrast rule (5th-95th percentile spread), gamma and gray-level shifts for the exposure
rule (mean gray level): the share of films that rule flags as outside the training films' range, and the model's
specificity/sensitivity at the default point on the films flagged and not flagged (clean validation: see the model
card). Each rule refuses or warns by its own rows (`choose_quality_action`).

| Perturbation | Rule | Flagged | Specificity (flagged) | Specificity (not flagged) | Sensitivity (flagged) | Sensitivity (not flagged) |
|---|---|---|---|---|---|---|
{quality}
"""
