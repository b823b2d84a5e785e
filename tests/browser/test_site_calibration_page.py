"""The page on a site-calibrated bundle: its model summary says where the thresholds come from.

The service runs on a copy of the shipped bundle whose metadata carries a site-calibration record (a display
test: the record's numbers are made up here; `calibrate` writes real ones, tests/training/test_calibrate.py)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pytest

from pneumonia.bundle import METADATA_FILENAME, Estimate, SiteCalibration, read_metadata
from tests.support import REPO_ROOT, Server, launch, stop, wait_ready

SHIPPED_BUNDLE = REPO_ROOT / "models" / "default"


def _rate(value: float) -> dict[str, Estimate]:
    e = Estimate(value=value, ci_low=value - 0.05, ci_high=min(1.0, value + 0.04))
    return {"sensitivity": e, "specificity": e, "ppv": e, "npv": e}


@pytest.fixture(scope="module")
def service(browser, tmp_path_factory):
    """Overrides the session's service for this module: the shipped model, site-calibrated on paper."""
    bundle = shutil.copytree(SHIPPED_BUNDLE, tmp_path_factory.mktemp("site") / "bundle")
    metadata = read_metadata(bundle)
    names = [p.name for p in metadata.operating_points]
    record = SiteCalibration(
        method="shrunk: made up for a display test", calibration="bias", source_bundle=metadata.name,
        source_version=metadata.version, n_normal=40, n_pneumonia=60, images_sha256="ab" * 32,
        calibrated_at=datetime(2026, 12, 1, tzinfo=UTC), scale=1.0, bias=-2.5, prevalence=0.743,
        roc_auc=Estimate(value=0.97, ci_low=0.94, ci_high=0.99), before={n: _rate(0.7) for n in names},
        after={n: _rate(0.9) for n in names},
    )  # fmt: skip
    points = [p.model_copy(update={"sensitivity": 0.95, "specificity": 0.9}) for p in metadata.operating_points]
    updated = metadata.model_copy(update={"site_calibration": record, "operating_points": points})
    (bundle / METADATA_FILENAME).write_text(json.dumps(updated.model_dump(mode="json"), indent=2))
    log_path = bundle.parent / "server.log"
    process, base_url = launch(bundle, log_path, PNEUMONIA_INPUT_CHECK="refuse")
    try:
        wait_ready(process, base_url, log_path)
        yield Server(process, base_url, log_path)
    finally:
        if process.poll() is None:
            stop(process)


def test_the_summary_says_the_thresholds_come_from_the_site(page):
    page.goto("/")
    page.wait_for_selector("#model-summary table")
    summary = page.inner_text("#model-summary")
    assert "chosen on this site's labelled sample (40 NORMAL, 60 PNEUMONIA; 2026-12-01; method shrunk)" in summary
    assert "sensitivity 0.900 [0.850, 0.940]" in summary
    assert "Source model before site calibration" in summary  # the validation table is the source's
    options = page.eval_on_selector_all("#operating-point option", "os => os.map(o => o.textContent)")
    assert options and all("site sample sensitivity 0.950" in text for text in options)
