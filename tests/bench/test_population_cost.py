"""`python -m bench.population_cost` on the tiny bundle: the measurement runs and writes its files. The timings
themselves are the committed run's (bench/results/population_cost.md), never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench.population_cost import VARIANTS, main


def test_it_times_every_variant_and_writes_json_and_markdown(tiny_bundle: Path, tmp_path: Path) -> None:
    assert main(["--bundle", str(tiny_bundle), "--repetitions", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "population_cost.json").read_text())
    assert result["calls_per_variant"] == 2 * result["samples"] and result["samples"] == 6
    for kind in ("assess", "checks"):
        assert set(result["median_ms"][kind]) == set(VARIANTS)
        assert all(value > 0 for value in result["median_ms"][kind].values())
        assert set(result["median_paired_difference_ms"][kind]) == {f"full - {v}" for v in VARIANTS[1:]}
    assert result["components_median_ms"]["exposure"] > 0
    assert {"loadavg", "usable_cpus", "neighbours", "nice"} <= set(result["load_before"])
    text = (tmp_path / "population_cost.md").read_text()
    assert "| the checks alone |" in text and "Load:" in text and f"{result['growth_upper_bound_ms']:.3f} ms" in text
