"""`python -m training site-report`: how a bundle does on a site's labelled images, before anyone relies on it.

Read-only: the bundle is loaded and verified as the service loads it, every image is scored through the served
path (pneumonia.Model: decode, input check under `refuse`, ONNX), and the report is written to its own folder:
report.json, report.md and report.html (opens offline: its pictures are embedded), plus the PNGs the Markdown
links to. What it holds:
- the images per class, and each one left out with its reasons;
- ROC-AUC with a stratified bootstrap interval;
- at every operating point: sensitivity, specificity, PPV and NPV with Wilson intervals (right at small n);
- a reliability plot and the ROC curve, the operating points marked;
- a gallery of false positives and false negatives at the default point, with the explanation overlay of the
  predicted class (the image alone when the bundle cannot explain: no model.keras, or no TensorFlow);
- a verdict in words.
PPV and NPV are at the sample's own class mix: a labelled sample chosen per class says nothing about the
site's prevalence.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.bundle import BundleMetadata, Estimate
from pneumonia.labels import positive_mask
from pneumonia.model import Model
from training.errors import TrainingError
from training.metrics import bootstrap_intervals, logits_from_probabilities, reliability_curve, wilson_interval
from training.recalibrate import Counts, counts
from training.site_data import LabelledFile, ScoredSite, score_site
from training.site_options import BOOTSTRAP, GALLERY

log = logging.getLogger(__name__)

WIDE = 0.10  # an interval wider than +-WIDE says the sample is too small to tell
THUMBNAIL = 320
RESULTS_README = "results/site_calibration/README.md"


class SiteReportError(TrainingError):
    """The report cannot be made from these images (e.g. a class has no usable image)."""


def estimate(successes: int, n: int) -> Estimate:
    low, high = wilson_interval(successes, n)
    return Estimate(value=successes / n if n else float("nan"), ci_low=low, ci_high=high)


def point_metrics(c: Counts) -> dict[str, Estimate]:
    """Sensitivity, specificity, PPV and NPV with 95% Wilson intervals."""
    return {
        "sensitivity": estimate(c.tp, c.tp + c.fn),
        "specificity": estimate(c.tn, c.tn + c.fp),
        "ppv": estimate(c.tp, c.tp + c.fp),
        "npv": estimate(c.tn, c.tn + c.fn),
    }


def wide(e: Estimate) -> bool:
    return e.ci_low is None or e.ci_high is None or (e.ci_high - e.ci_low) / 2 > WIDE


def _fmt(e: Estimate | dict) -> str:
    e = Estimate.model_validate(e)
    if e.value != e.value:  # nan: no image of that kind
        return "n/a"
    return f"{e.value:.3f}" if e.ci_low is None else f"{e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"


@dataclass
class Report:
    data: dict[str, Any]  # report.json
    pictures: dict[str, bytes]  # file name (relative to the report folder) -> PNG


def reference_name(metadata: BundleMetadata) -> str:
    """Where the bundle's operating points were measured: the numbers a site is compared with."""
    return "the calibration sample" if metadata.site_calibration else "validation"


def verdict(data: dict[str, Any]) -> str:
    """One paragraph: how the default point does here against where it was chosen, and what to do."""
    default = data["default_operating_point"]
    point = data["operating_points"][default]
    reference = data["reference"]
    sens, spec = Estimate.model_validate(point["sensitivity"]), Estimate.model_validate(point["specificity"])
    auc = Estimate.model_validate(data["roc_auc"])
    short = [
        (name, e, recorded)
        for name, e, recorded in (
            ("sensitivity", sens, point["recorded_sensitivity"]),
            ("specificity", spec, point["recorded_specificity"]),
        )  # fmt: skip
        if e.ci_high is not None and e.ci_high < recorded
    ]
    head = (
        f"At `{default}` (threshold {point['threshold']:.4f}) this site's sensitivity is {_fmt(sens)} "
        f"({reference} {point['recorded_sensitivity']:.3f}) and its specificity {_fmt(spec)} "
        f"({reference} {point['recorded_specificity']:.3f}), on {data['n']['PNEUMONIA']} PNEUMONIA and "
        f"{data['n']['NORMAL']} NORMAL images."
    )
    if short:
        worse = " and the ".join(f"{name} is below {reference}'s {recorded:.3f}" for name, _, recorded in short)
        if auc.ci_low is not None and auc.ci_low >= 0.9:
            action = (
                f"The model still ranks this site's films well (ROC-AUC {_fmt(auc)}), so the threshold is what is "
                "off: calibrate before use (`python -m training calibrate` re-chooses the operating points on "
                "labelled images of this site), then check the calibrated bundle on other labelled images."
            )
        else:
            action = (
                f"ROC-AUC is {_fmt(auc)}: the ranking itself is weak here, which no threshold can repair. Do not "
                "use this model at this site without a model trained for it."
            )
        text = f"{head} The {worse}. {action}"
    else:
        text = f"{head} Nothing here is significantly worse than {reference} at this sample size."
    if any(wide(e) for e in (sens, spec)):
        text += (
            f" Some intervals are wider than ±{WIDE:.2f}: too few images to tell; label more "
            f"({RESULTS_README} gives the sample size)."
        )
    if data.get("in_sample"):
        text += (
            " These are the images the operating points were chosen on, so the numbers are optimistic: "
            "judge the bundle on other labelled images of the site (`python -m training site-report`)."
        )
    return text


def build_report(
    model: Model,
    site: ScoredSite,
    *,
    title: str,
    gallery: int = GALLERY,
    bootstrap: int = BOOTSTRAP,
    in_sample: bool = False,
    seed: int = 0,
) -> Report:
    metadata = model.metadata
    y, p = site.labels, site.probabilities
    if site.count(0) == 0 or site.count(1) == 0:
        raise SiteReportError(
            f"the report needs usable images of both classes; got {site.count(0)} NORMAL and {site.count(1)} "
            f"PNEUMONIA ({len(site.refused)} left out)"
        )
    default = metadata.operating_point()
    intervals = bootstrap_intervals(y, p, default.threshold, samples=bootstrap, seed=seed)
    points: dict[str, Any] = {}
    for point in metadata.operating_points:
        c = counts(positive_mask(p, point.threshold), y)
        points[point.name] = {
            "threshold": point.threshold,
            "counts": {"tp": c.tp, "fn": c.fn, "tn": c.tn, "fp": c.fp},
            **{k: v.model_dump() for k, v in point_metrics(c).items()},
            "recorded_sensitivity": point.sensitivity,
            "recorded_specificity": point.specificity,
        }
    confidence, observed, bin_counts = reliability_curve(y, p)
    data: dict[str, Any] = {
        "title": title,
        "bundle": f"{metadata.name} {metadata.version}",
        "reference": reference_name(metadata),
        "in_sample": in_sample,
        "default_operating_point": default.name,
        "n": {"NORMAL": site.count(0), "PNEUMONIA": site.count(1)},
        "refused": [
            {"image": r.name, "label": "PNEUMONIA" if r.label else "NORMAL", "code": r.code, "reasons": list(r.reasons)}
            for r in site.refused
        ],
        "roc_auc": intervals["roc_auc"].model_dump(),
        "validation_roc_auc": metadata.validation.metrics["roc_auc"].value,
        "ece": intervals["ece"].model_dump(),
        "reliability": {
            "confidence": confidence.round(4).tolist(),
            "observed": observed.round(4).tolist(),
            "count": bin_counts.tolist(),
        },
        "operating_points": points,
        "site_calibration": metadata.site_calibration is not None,
    }
    data["warnings"] = [
        f"{name}: {metric} {_fmt(points[name][metric])} is wider than ±{WIDE:.2f}"
        for name in points
        for metric in ("sensitivity", "specificity")
        if wide(Estimate.model_validate(points[name][metric]))
    ]
    for warning in data["warnings"]:
        log.warning("%s", warning)
    data["verdict"] = verdict(data)
    pictures = {"roc.png": _roc_plot(metadata, y, p), "reliability.png": _reliability_plot(y, p)}
    data["gallery"], shown = _gallery(model, site, default.name, gallery)
    pictures |= shown
    return Report(data, pictures)


# --- pictures ---------------------------------------------------------------------------------------------------
def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _roc_plot(metadata: BundleMetadata, y: np.ndarray, p: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, logits_from_probabilities(p))  # logits: no ties among saturated probabilities
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, color="#1f4e79", lw=1.6, label="this site")
    for point in metadata.operating_points:
        c = counts(positive_mask(p, point.threshold), y)
        ax.plot(c.fp / max(1, c.fp + c.tn), c.tp / max(1, c.tp + c.fn), "o", ms=5, label=point.name)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve, operating points marked")
    ax.legend(fontsize=7, loc="lower right")
    return _figure_png(fig)


def _reliability_plot(y: np.ndarray, p: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confidence, observed, bin_counts = reliability_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8, label="perfectly calibrated")
    ax.scatter(confidence, observed, s=12 + 60 * bin_counts / bin_counts.max(), color="#1f4e79", zorder=3)
    ax.plot(confidence, observed, color="#1f4e79", lw=1, label="this site (dot size: images)")
    ax.set(xlabel="predicted P(pneumonia)", ylabel="observed share PNEUMONIA", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("Reliability (sample's own class mix)")
    ax.legend(fontsize=7, loc="upper left")
    return _figure_png(fig)


def _thumbnail(png_or_pixels: bytes | np.ndarray) -> bytes:
    from PIL import Image

    image = (
        Image.open(io.BytesIO(png_or_pixels)) if isinstance(png_or_pixels, bytes) else Image.fromarray(png_or_pixels)
    )
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gallery(model: Model, site: ScoredSite, point: str, limit: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The most confident errors at operating point `point`: false positives (highest P first) and false
    negatives (lowest first), each with the explanation overlay of the predicted class, or the image alone."""
    positive = positive_mask(site.probabilities, model.metadata.operating_point(point).threshold)
    fp = [i for i in np.argsort(-site.probabilities) if positive[i] and site.labels[i] == 0][:limit]
    fn = [i for i in np.argsort(site.probabilities) if not positive[i] and site.labels[i] == 1][:limit]
    note = None if model.explain_available else (model.explain_unavailable_reason or "explanations unavailable")
    entries: dict[str, Any] = {"false_positives": [], "false_negatives": [], "explanations": note}
    pictures = {}
    for kind, chosen in (("false_positives", fp), ("false_negatives", fn)):
        for rank, i in enumerate(chosen):
            name = f"gallery/{kind}_{rank + 1:02d}.png"
            method = None
            if model.explain_available:
                explanation = model.explain(site.paths[i], operating_point=point)  # the file, as the service would
                pictures[name], method = _thumbnail(explanation.overlay_png), explanation.method
            else:
                pictures[name] = _thumbnail(site.gray[i])
            entries[kind].append(
                {
                    "image": site.names[i],
                    "probability": round(float(site.probabilities[i]), 6),
                    "picture": name,
                    "explanation": method,
                }  # fmt: skip
            )
    return entries, pictures


# --- writing ----------------------------------------------------------------------------------------------------
def write_report(report: Report, out: Path) -> Path:
    out = Path(out)
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    for name, png in report.pictures.items():
        (out / name).write_bytes(png)
    (out / "report.json").write_text(json.dumps(report.data, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report.data))
    (out / "report.html").write_text(html_page(report.data, report.pictures))
    return out


def _points_table(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, point in data["operating_points"].items():
        c = point["counts"]
        rows.append([
            name + (" (default)" if name == data["default_operating_point"] else ""),
            f"{point['threshold']:.4f}",
            _fmt(point["sensitivity"]), _fmt(point["specificity"]), _fmt(point["ppv"]), _fmt(point["npv"]),
            f"{point['recorded_sensitivity']:.3f} / {point['recorded_specificity']:.3f}",
            f"{c['tp']}/{c['fn']}/{c['tn']}/{c['fp']}",
        ])  # fmt: skip
    return rows


POINT_HEADER = ["Operating point", "Threshold", "Sensitivity", "Specificity", "PPV", "NPV",
                "Recorded sens / spec", "TP/FN/TN/FP"]  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# {data['title']}",
        "",
        f"Bundle {data['bundle']}. Images used: {data['n']['NORMAL']} NORMAL, {data['n']['PNEUMONIA']} PNEUMONIA; "
        f"left out: {len(data['refused'])}.",
        "",
        "## Verdict",
        "",
        data["verdict"],
        "",
        f"ROC-AUC {_fmt(data['roc_auc'])} (stratified bootstrap; validation {data['validation_roc_auc']:.3f}). "
        f"Expected calibration error {_fmt(data['ece'])}.",
        "",
        "## Operating points",
        "",
        f"95% Wilson intervals. PPV and NPV at this sample's class mix. Recorded: what {data['reference']} measured.",
        "",
        "| " + " | ".join(POINT_HEADER) + " |",
        "|" + "---|" * len(POINT_HEADER),
        *("| " + " | ".join(row) + " |" for row in _points_table(data)),
        "",
        "![ROC curve](roc.png) ![Reliability](reliability.png)",
        "",
    ]
    if data["warnings"]:
        lines += ["## Warnings", "", *(f"- {w}" for w in data["warnings"]), ""]
    lines += ["## Left out", ""]
    lines += [f"- {r['image']} ({r['label']}): {r['code']}: {'; '.join(r['reasons'])}" for r in data["refused"]] or [
        "None."
    ]
    gallery = data["gallery"]
    lines += ["", f"## Errors at `{data['default_operating_point']}`", ""]
    if gallery["explanations"]:
        lines += [f"Explanation overlays unavailable: {gallery['explanations']} The images are shown alone.", ""]
    for kind, title in (("false_positives", "False positives"), ("false_negatives", "False negatives")):
        lines += [f"### {title}", ""]
        lines += [
            f"![{e['image']}]({e['picture']}) {e['image']}, P(pneumonia) {e['probability']:.4f}" for e in gallery[kind]
        ] or ["None."]
        lines.append("")
    return "\n".join(lines)


def html_page(data: dict[str, Any], pictures: dict[str, bytes]) -> str:
    def img(name: str, alt: str) -> str:
        encoded = base64.b64encode(pictures[name]).decode()
        return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'

    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in _points_table(data))
    refused = "".join(
        f"<li>{e(r['image'])} ({e(r['label'])}): {e(r['code'])}: {e('; '.join(r['reasons']))}</li>"
        for r in data["refused"]
    )
    warnings = "".join(f"<li>{e(w)}</li>" for w in data["warnings"])
    gallery = data["gallery"]
    sections = []
    for kind, title in (("false_positives", "False positives"), ("false_negatives", "False negatives")):
        figures = "".join(
            f"<figure>{img(x['picture'], x['image'])}<figcaption>{e(x['image'])}<br>P(pneumonia) "
            f"{x['probability']:.4f}</figcaption></figure>"
            for x in gallery[kind]
        )
        sections.append(f"<h3>{title}</h3><div class=gallery>{figures or '<p>None.</p>'}</div>")
    note = (
        f"<p>Explanation overlays unavailable: {e(gallery['explanations'])} The images are shown alone.</p>"
        if gallery["explanations"]
        else "<p>Each picture: the explanation overlay of the predicted class (red: strongest evidence in that "
        "image).</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(data["title"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70rem; margin: 1rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }} td, th {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; }}
.verdict {{ background: #fff6e0; border-left: 4px solid #d89b00; padding: 0.5rem 1rem; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 0.75rem; }} figure {{ margin: 0; font-size: 0.8rem; }}
.note {{ font-size: 0.85rem; color: #555; }}
</style></head><body>
<h1>{e(data["title"])}</h1>
<p class=note>Research use only: not a medical device. Bundle {e(data["bundle"])}. Images used:
{data["n"]["NORMAL"]} NORMAL, {data["n"]["PNEUMONIA"]} PNEUMONIA; left out: {len(data["refused"])}.</p>
<h2>Verdict</h2><p class=verdict>{e(data["verdict"])}</p>
<p>ROC-AUC {e(_fmt(data["roc_auc"]))} (stratified bootstrap; validation {data["validation_roc_auc"]:.3f}).
Expected calibration error {e(_fmt(data["ece"]))}.</p>
<h2>Operating points</h2>
<p class=note>95% Wilson intervals. PPV and NPV at this sample's class mix. Recorded: what {e(data["reference"])}
measured.</p>
<table><tr>{"".join(f"<th>{e(h)}</th>" for h in POINT_HEADER)}</tr>{rows}</table>
<p>{img("roc.png", "ROC curve")} {img("reliability.png", "Reliability plot")}</p>
{f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else ""}
<h2>Left out</h2>{f"<ul>{refused}</ul>" if refused else "<p>None.</p>"}
<h2>Errors at {e(data["default_operating_point"])}</h2>{note}
{"".join(sections)}
</body></html>
"""


def site_report(
    bundle: Path,
    images: Path,
    out: Path,
    *,
    labels: Path | None = None,
    gallery: int = GALLERY,
    bootstrap: int = BOOTSTRAP,
) -> Report:
    """Load the bundle as the service does, score the site's labelled images, write the report to `out`."""
    from training.site_data import labelled_files

    files: list[LabelledFile] = labelled_files(images, labels)
    model = Model.load(bundle, explain=gallery > 0)  # TensorFlow only for the gallery's overlays
    site = score_site(model, files)
    report = build_report(
        model, site, title=f"Site report: {model.metadata.name} on {Path(images).name}", gallery=gallery,
        bootstrap=bootstrap,
    )  # fmt: skip
    write_report(report, out)
    return report
