"""Is this upload a frontal chest X-ray the model may be asked about? One verdict per decoded image.

The check runs in these steps, all on the request path and none with TensorFlow:
1. cheap checks on the pixels (colour, near-constant, noise-like, extreme aspect ratio), a DICOM upload's
   tags (pneumonia/population.py: view, body part, modality, age) and, for a schema-3 bundle, its
   exposure/contrast range (`image_quality`);
2. orientation and polarity from a 24x24 thumbnail of the model input: a linear classifier fitted on the
   training X-rays in their four rotations says whether the image is upright, turned by 90/180/270 degrees
   (then it is turned back and the verdict says "rotated"), mirrored (flipped back) or inverted (refused);
3. the out-of-distribution detector: channel means and standard deviations at several depths of the
   classifier (extra outputs of the same ONNX run that gives the probability), a Mahalanobis distance per
   depth (in a principal subspace plus the residual off it), each normalised on validation X-rays, and the
   maximum as the score (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
   samples"). Pooled features of the last layer alone missed about a third of non-X-ray images; the early
   layers' texture statistics catch documents, photographs and noise that the last layer maps near X-rays;
4. for a schema-3 bundle, the learned population check on the same statistics (pneumonia/population.py).

The fitted parameters (step 2 and 3) live in the bundle's `input_check.npz` (`training/ood.py` fits them);
a bundle without it still serves, with `detector: "unavailable"`, and never claims the check it cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from pneumonia.bundle import BundleError, BundleMetadata, ImageQualitySpec, Population, verify_file
from pneumonia.errors import ErrorCode
from pneumonia.imaging import DecodedImage
from pneumonia.population import (
    PopulationDetector,
    describe_age,
    load_population_detector,
    population_words,
    tag_findings,
)

STATISTICS_OUTPUT_PREFIX = "stats_"  # ONNX outputs stats_0..stats_{k-1}: (N, 2C) = [E[x], E[x^2]] per channel
THUMBNAIL_SIDE = 24

Policy = Literal["refuse", "warn", "off"]
POLICIES: tuple[Policy, ...] = get_args(Policy)

# Cheap-check limits, set from the 4,430 training X-rays (192 px model input) with a wide margin:
# pixel standard deviation >= 19.7 on every training image; the noise ratio (mean |Laplacian| / std) <= 0.21
# on every training image, while noise images score 2.6 and rendered text 1.1 (results/ood/README.md).
ANALYSIS_SIDE = 192  # the resolution the noise limit below was measured at
MIN_PIXEL_STD = 8.0
MAX_NOISE_RATIO = 0.45
CHEST_MAX_ASPECT_RATIO = 2.5  # the input check: a chest film is near square (decoding allows up to 8:1)
# Mean per-pixel channel spread of an RGB upload above which it is a colour picture, not a grayscale film
# (JPEG chroma noise of grayscale scans stays below ~3; pneumonia.imaging.colour_deviation).
MAX_COLOUR_DEVIATION = 12.0
# The orientation/mirror/polarity classifiers act only when this sure; below it an image is taken as it is.
ORIENTATION_CONFIDENCE = 0.9
ORIENTATION_NAMES = {0: "upright", 1: "rotated 90° counter-clockwise", 2: "rotated 180°", 3: "rotated 90° clockwise"}


@dataclass(frozen=True)
class LinearClassifier:
    """Multinomial logistic regression on standardised thumbnails: softmax(x @ coef.T + intercept)."""

    coef: np.ndarray  # (K, D)
    intercept: np.ndarray  # (K,)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K); a binary classifier (K=1) returns P(class 1) as (N, 1)."""
        scores = features @ self.coef.T + self.intercept
        if scores.shape[1] == 1:
            return 1.0 / (1.0 + np.exp(-scores))
        scores = scores - scores.max(axis=1, keepdims=True)
        odds = np.exp(scores)
        return odds / odds.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class DepthDetector:
    """Mahalanobis distance of one depth's channel statistics from the training X-rays'.

    distance^2 = sum_k (v_k . (x - center))^2 / variance_k / k  +  |residual off the basis|^2 / residual_scale
    normalised so that the median validation X-ray scores 0 and the 99th percentile scores 1.
    """

    center: np.ndarray  # (D,)
    basis: np.ndarray  # (D, K) principal directions of the training features (float32 as stored: see `score`)
    variances: np.ndarray  # (K,)
    residual_scale: float
    median: float
    spread: float  # 99th percentile - median, on validation

    def score(self, features: np.ndarray) -> np.ndarray:
        centred = features - self.center  # (N, D)
        # In the basis's own precision: the bundle stores it as float32, and a float32 product is ~4x faster
        # than a float64 one over the deepest layer's 2,560 features (about 0.1 ms of every request).
        projected = (centred.astype(self.basis.dtype) @ self.basis).astype(np.float64)  # (N, K)
        within = np.sum(projected**2 / self.variances, axis=1) / len(self.variances)
        # |residual|^2 = |centred|^2 - |projected|^2, as the basis is orthonormal (PCA directions): one
        # (D, K) product per request instead of two.
        residual = np.maximum(np.sum(centred**2, axis=1) - np.sum(projected**2, axis=1), 0.0)
        off = residual / self.residual_scale
        return (np.sqrt(within + off) - self.median) / self.spread


def channel_features(statistics: np.ndarray) -> np.ndarray:
    """(N, 2C) [E[x], E[x^2]] -> (N, 2C) [mean, standard deviation] of each channel."""
    channels = statistics.shape[1] // 2
    mean = statistics[:, :channels].astype(np.float64)
    variance = np.maximum(statistics[:, channels:].astype(np.float64) - mean**2, 0.0)
    return np.concatenate([mean, np.sqrt(variance)], axis=1)


def thumbnails(gray: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """(N, H, W) model-input gray levels -> (N, side*side), each standardised to mean 0, std 1.

    Area averaging (PIL's box filter: the block mean when `side` divides the size), so any input size works.
    """
    n, height, width = gray.shape
    if height % side == 0 and width % side == 0:  # the served sizes: a reshape, ~10x faster than resizing
        small = gray.astype(np.float64).reshape(n, side, height // side, side, width // side).mean(axis=(2, 4))
    else:
        small = np.stack(
            [
                np.asarray(Image.fromarray(g.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BOX))
                for g in gray
            ]
        ).astype(np.float64)  # (N, side, side)
    small = (small - small.mean(axis=(1, 2), keepdims=True)) / (small.std(axis=(1, 2), keepdims=True) + 1e-6)
    return small.reshape(len(gray), -1)


@dataclass(frozen=True)
class InputCheckModel:
    """The fitted part of the check, as stored in a bundle's input_check.npz."""

    depths: tuple[DepthDetector, ...]
    layer_names: tuple[str, ...]
    threshold: float
    orientation: LinearClassifier  # 4 classes: np.rot90 turns k = 0..3 applied to an upright X-ray
    mirror: LinearClassifier  # binary: P(flipped left-right)
    inversion: LinearClassifier  # binary: P(negative image)

    def ood_score(self, statistics: list[np.ndarray]) -> np.ndarray:
        """One (N, 2C) statistics array per depth -> (N,) the largest normalised distance."""
        return self.ood_score_of_features([channel_features(s) for s in statistics])

    def ood_score_of_features(self, features: list[np.ndarray]) -> np.ndarray:
        """One (N, 2C) [mean, std] feature array per depth (`channel_features`) -> (N,) the largest distance."""
        scores = [d.score(f) for d, f in zip(self.depths, features, strict=True)]
        return np.max(np.stack(scores), axis=0)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "layer_names": np.array(self.layer_names),
            "threshold": np.array(self.threshold),
        }
        for i, d in enumerate(self.depths):
            arrays |= {
                f"depth{i}_center": d.center.astype(np.float32),
                f"depth{i}_basis": d.basis.astype(np.float32),
                f"depth{i}_variances": d.variances,
                f"depth{i}_norm": np.array([d.residual_scale, d.median, d.spread]),
            }
        for name in ("orientation", "mirror", "inversion"):
            classifier: LinearClassifier = getattr(self, name)
            arrays |= {f"{name}_coef": classifier.coef, f"{name}_intercept": classifier.intercept}
        with Path(path).open("wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its bool flag

    @classmethod
    def load(cls, path: Path) -> InputCheckModel:
        with np.load(path, allow_pickle=False) as data:
            names = tuple(str(n) for n in data["layer_names"])
            depths = tuple(
                DepthDetector(
                    center=data[f"depth{i}_center"].astype(np.float64),
                    basis=np.ascontiguousarray(data[f"depth{i}_basis"], dtype=np.float32),
                    variances=data[f"depth{i}_variances"],
                    residual_scale=float(data[f"depth{i}_norm"][0]),
                    median=float(data[f"depth{i}_norm"][1]),
                    spread=float(data[f"depth{i}_norm"][2]),
                )
                for i in range(len(names))
            )
            classifiers = {
                name: LinearClassifier(data[f"{name}_coef"], data[f"{name}_intercept"])
                for name in ("orientation", "mirror", "inversion")
            }
            return cls(depths=depths, layer_names=names, threshold=float(data["threshold"]), **classifiers)


@dataclass
class InputCheckResult:
    """The verdict for one image. `reasons` say why it was refused, or what was done to it (rotated back)."""

    accepted: bool
    policy: Policy
    detector: Literal["available", "unavailable", "off"]
    reasons: list[str] = field(default_factory=list)
    ood_score: float | None = None
    ood_threshold: float | None = None
    orientation: str = "upright"
    rotated_back_degrees: int = 0
    mirrored: bool = False
    measurements: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # e.g. why the detector is unavailable
    # Whose film: "inside" the bundle's population, "outside" it, or "unchecked" (policy off, or a bundle
    # before schema 3 and no DICOM age). `age` is what the DICOM tags say, in words ("age unknown" without).
    population: Literal["inside", "outside", "unchecked"] = "unchecked"
    age: str = "age unknown"
    population_score: float | None = None  # P(outside the population) from the learned check
    population_threshold: float | None = None
    # The error code of a refusal: the first kind of failure found, in REFUSAL_ORDER (None when accepted).
    refusal_code: ErrorCode | None = None

    def refuse(self, reason: str, code: ErrorCode = ErrorCode.NOT_A_CHEST_XRAY) -> None:
        self.accepted = False
        self.reasons.append(reason)
        if self.refusal_code is None or REFUSAL_ORDER.index(code) < REFUSAL_ORDER.index(self.refusal_code):
            self.refusal_code = code

    def refusal_summary(self) -> str:
        return REFUSAL_SUMMARIES[self.refusal_code or ErrorCode.NOT_A_CHEST_XRAY]


# When an image fails several ways, the code names the most basic failure: not an X-ray at all comes before
# "an X-ray, but not of this model's population", which comes before "the right kind of film, badly exposed".
REFUSAL_ORDER = (ErrorCode.NOT_A_CHEST_XRAY, ErrorCode.OUTSIDE_POPULATION, ErrorCode.POOR_IMAGE_QUALITY)
REFUSAL_SUMMARIES = {
    ErrorCode.NOT_A_CHEST_XRAY: "Not accepted as a frontal chest X-ray",
    ErrorCode.OUTSIDE_POPULATION: "Outside the population the model was trained on",
    ErrorCode.POOR_IMAGE_QUALITY: "Image quality outside what the model was trained on",
}


def colour_reason(colour_deviation: float) -> str | None:
    if colour_deviation > MAX_COLOUR_DEVIATION:
        return (
            f"colour picture: channels differ by {colour_deviation:.1f} gray levels on average "
            f"(> {MAX_COLOUR_DEVIATION:g}); chest X-rays are grayscale"
        )
    return None


def pixel_reasons(gray: np.ndarray, width: int, height: int, measurements: dict[str, float]) -> list[str]:
    """Cheap checks on the (H, W) model-input gray levels and the upload's own size.

    The noise ratio depends on the resolution it is measured at (a downsampled X-ray has sharper pixel-to-pixel
    steps), and its limit was set at 192 px: other model-input sizes are resized to that first.
    """
    pixels = gray.astype(np.float32)
    if pixels.shape != (ANALYSIS_SIDE, ANALYSIS_SIDE):
        resized = Image.fromarray(pixels, mode="F").resize((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
    std = float(pixels.std())
    laplacian = 4 * pixels[1:-1, 1:-1] - pixels[:-2, 1:-1] - pixels[2:, 1:-1] - pixels[1:-1, :-2] - pixels[1:-1, 2:]
    noise_ratio = float(np.abs(laplacian).mean() / (std + 1.0))
    aspect = max(width, height) / max(1, min(width, height))
    measurements.update(pixel_std=round(std, 3), noise_ratio=round(noise_ratio, 4), aspect_ratio=round(aspect, 3))
    reasons = []
    if std < MIN_PIXEL_STD:
        reasons.append(f"near-constant image: pixel standard deviation {std:.1f} (< {MIN_PIXEL_STD:g})")
    if noise_ratio > MAX_NOISE_RATIO:
        reasons.append(f"noise-like or text-like texture: noise ratio {noise_ratio:.2f} (> {MAX_NOISE_RATIO:g})")
    if aspect > CHEST_MAX_ASPECT_RATIO:
        reasons.append(f"extreme aspect ratio {aspect:.2f} (> {CHEST_MAX_ASPECT_RATIO:g}); a chest film is near square")
    return reasons


@dataclass(frozen=True)
class Orientation:
    quarter_turns: int  # np.rot90 turns that bring the image upright
    mirrored: bool
    inverted_probability: float
    confidence: float  # of the orientation decision


def read_orientation(model: InputCheckModel, gray: np.ndarray) -> Orientation:
    """Orientation, mirroring and polarity of one (H, W) model-input image."""
    thumb = thumbnails(gray[None].astype(np.float64))
    turns = model.orientation.probabilities(thumb)[0]  # P(image = upright turned by k quarter turns)
    k = int(np.argmax(turns))
    # An upright upload (nearly every request) reuses its thumbnail: ~0.1 ms of the request path (bench/).
    thumb_upright = thumbnails(np.rot90(gray, -k)[None].astype(np.float64)) if k else thumb
    mirrored = float(model.mirror.probabilities(thumb_upright)[0, 0]) >= ORIENTATION_CONFIDENCE
    inverted = float(model.inversion.probabilities(thumb)[0, 0])
    return Orientation(
        quarter_turns=(-k) % 4, mirrored=mirrored, inverted_probability=inverted, confidence=float(turns[k])
    )


class InputChecker:
    """Applies the check with a bundle's fitted parts; what a bundle lacks is skipped and the verdict says so.

    `model`: the out-of-distribution detector and orientation classifiers (schema 2); `population` and
    `population_detector`: whose films the model knows (schema 3); `quality`: the training films' exposure
    and contrast range (schema 3). DICOM tags are read for every bundle.
    """

    def __init__(
        self,
        model: InputCheckModel | None,
        unavailable_reason: str | None = None,
        *,
        population: Population | None = None,
        population_detector: PopulationDetector | None = None,
        quality: ImageQualitySpec | None = None,
    ):
        self.model = model
        self.unavailable_reason = unavailable_reason
        self.population = population
        self.population_detector = population_detector
        self.quality = quality

    @property
    def threshold(self) -> float | None:
        return None if self.model is None else self.model.threshold

    def inspect(self, image: DecodedImage, gray: np.ndarray, policy: Policy) -> tuple[InputCheckResult, DecodedImage]:
        """Checks that need no model output. Returns the verdict so far and the image to score: an image the
        orientation classifier is sure was turned or mirrored comes back upright, and the verdict says so."""
        if policy == "off":
            return InputCheckResult(accepted=True, policy=policy, detector="off"), image
        detector: Literal["available", "unavailable"] = "unavailable" if self.model is None else "available"
        result = InputCheckResult(
            accepted=True, policy=policy, detector=detector, ood_threshold=self.threshold, note=self.unavailable_reason
        )
        result.measurements["colour_deviation"] = round(image.colour_deviation, 3)
        cheap = [
            colour_reason(image.colour_deviation),
            *pixel_reasons(gray, image.width, image.height, result.measurements),
        ]
        for reason in filter(None, cheap):
            result.refuse(reason)
        self._check_tags(result, image)
        self._check_quality(result, gray)
        if self.model is None:
            return result, image
        return self._check_orientation(result, image, gray)

    def _check_tags(self, result: InputCheckResult, image: DecodedImage) -> None:
        tags = image.dicom
        if tags is None:
            return
        if tags.age_years is not None:
            result.age = f"{describe_age(tags.age_years)} (DICOM {tags.age_source})"
            if self.population is not None:
                result.population = "inside" if self.population.covers_age(tags.age_years) else "outside"
        for finding in tag_findings(tags, self.population):
            result.refuse(finding.reason, finding.code)

    def _check_quality(self, result: InputCheckResult, gray: np.ndarray) -> None:
        """Exposure and contrast against the training films' range (a bundle's `image_quality`)."""
        dynamic_range, mean = exposure(gray)
        result.measurements |= {"dynamic_range": round(dynamic_range, 2), "mean_level": round(mean, 2)}
        spec = self.quality
        if spec is None:
            return
        problems = []  # (what, the action the bundle's evidence chose for that rule)
        if dynamic_range < spec.min_dynamic_range:
            problems.append((f"low contrast: 5th-95th percentile spread {dynamic_range:.0f} gray levels "
                             f"(< {spec.min_dynamic_range:.0f}, below every training film but the lowest few)",
                             spec.action))  # fmt: skip
        if not spec.min_mean <= mean <= spec.max_mean:
            problems.append((f"{'under' if mean < spec.min_mean else 'over'}exposed: mean gray level {mean:.0f} "
                             f"(training films: {spec.min_mean:.0f}-{spec.max_mean:.0f})",
                             spec.exposure_action or spec.action))  # fmt: skip
        for problem, action in problems:
            if action == "refuse":
                result.refuse(problem, ErrorCode.POOR_IMAGE_QUALITY)
            else:
                result.reasons.append(f"{problem}; the answer may be unreliable")

    def _check_orientation(
        self, result: InputCheckResult, image: DecodedImage, gray: np.ndarray
    ) -> tuple[InputCheckResult, DecodedImage]:
        assert self.model is not None
        orientation = read_orientation(self.model, gray)
        result.measurements |= {
            "orientation_confidence": round(orientation.confidence, 4),
            "inverted_probability": round(orientation.inverted_probability, 4),
        }
        if orientation.inverted_probability >= ORIENTATION_CONFIDENCE:
            # A negative film's orientation cannot be read (the orientation classifier learned upright
            # positives), so nothing is said about it: turning it back would be a claim the check cannot make.
            result.refuse(
                f"inverted (negative) image: P(inverted) {orientation.inverted_probability:.2f}; "
                "bones should be bright and lungs dark"
            )
            return result, image
        if orientation.confidence < ORIENTATION_CONFIDENCE:
            result.refuse(f"orientation unclear: best guess only {orientation.confidence:.2f} sure")
            return result, image
        pixels = image.pixels
        if orientation.quarter_turns:
            degrees = 90 * orientation.quarter_turns
            result.orientation = ORIENTATION_NAMES[(-orientation.quarter_turns) % 4]
            result.rotated_back_degrees = degrees
            result.reasons.append(f"the image was {result.orientation}; rotated back to upright before scoring")
            pixels = np.rot90(pixels, orientation.quarter_turns)
        if orientation.mirrored:
            result.mirrored = True
            result.reasons.append("the image appeared mirrored left-right; flipped back before scoring")
            pixels = pixels[:, ::-1]
        if pixels is image.pixels:
            return result, image
        return result, replace(image, pixels=np.ascontiguousarray(pixels))

    def score(self, result: InputCheckResult, statistics: list[np.ndarray]) -> None:
        """Add the verdicts that read the ONNX run's statistics outputs (batch of one): out of distribution,
        then (for a film the DICOM tags did not already place) the learned population check."""
        if result.policy == "off" or self.model is None:
            return
        features = [channel_features(s) for s in statistics]
        score = float(self.model.ood_score_of_features(features)[0])
        result.ood_score = round(score, 4)
        if score > self.model.threshold:
            result.refuse(
                f"not like the chest X-rays the model was trained on: out-of-distribution score {score:.2f} "
                f"> {self.model.threshold:.2f} (the 99.5th percentile of validation X-rays)"
            )
        detector = self.population_detector
        if detector is None or self.population is None:
            return
        outside = float(detector.probability(np.concatenate(features, axis=1))[0])
        result.population_score, result.population_threshold = round(outside, 4), detector.threshold
        if result.population != "unchecked":  # the DICOM age decided it: a recorded age beats a learned guess
            return
        if outside > detector.threshold:
            result.population = "outside"
            result.refuse(
                f"this looks like a film of someone outside the model's population (P {outside:.2f} > "
                f"{detector.threshold:.2f}), most likely an adult; the model was trained on "
                f"{population_words(self.population)}",
                ErrorCode.OUTSIDE_POPULATION,
            )
        else:
            result.population = "inside"


def exposure(gray: np.ndarray) -> tuple[float, float]:
    """(5th-95th percentile spread, mean) of the model input's gray levels. A 256-bin histogram of the
    resized image: about 0.1 ms, where np.percentile's sort of 36,864 floats took several times that."""
    levels = np.clip(gray, 0, 255).astype(np.uint8).ravel()
    cumulative = np.cumsum(np.bincount(levels, minlength=256))
    low, high = np.searchsorted(cumulative, (0.05 * levels.size, 0.95 * levels.size))
    return float(high - low), float(levels.mean())


def load_checker(bundle_dir: Path, metadata: BundleMetadata) -> InputChecker:
    """The bundle's fitted checks after their checksums are verified; only what a bundle has is applied."""
    detector = load_population_detector(bundle_dir, metadata.population_check)
    population, quality = metadata.population, metadata.image_quality
    spec = metadata.input_check
    if spec is None:
        return InputChecker(
            None,
            "This model bundle has no fitted input check (schema 1): only the cheap pixel checks ran; orientation "
            "and out-of-distribution detection are unavailable. Re-export it with `python -m training input-check`.",
            population=population,
            population_detector=detector,
            quality=quality,
        )
    path = verify_file(bundle_dir, spec.filename, spec.sha256)
    try:
        model = InputCheckModel.load(path)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable input check ({exc})") from exc
    if list(model.layer_names) != spec.layers or len(model.depths) != len(spec.statistics_outputs):
        raise BundleError(f"{path}: input check does not match metadata (layers {model.layer_names} vs {spec.layers})")
    return InputChecker(model, population=population, population_detector=detector, quality=quality)
