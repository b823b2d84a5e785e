"""MkDocs hook (mkdocs.yml `hooks:`): the plots under results/ become files of the site, not copies in docs/.

Every PNG under results/ is published at the same path (a page links `results/research/thresholds.png`), so
the pages show the plots the tools wrote, as they wrote them. An included results file that links its own
plots by a bare name (results/research/research.md: `![thresholds](thresholds.png)`) resolves through
`ALIASES`; a new bare link there fails `mkdocs build --strict` until it is listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = "results"
# bare image names of included results files -> their path in the repository
ALIASES = {
    "thresholds.png": "results/research/thresholds.png",
    "epochs.png": "results/research/epochs.png",
    "ablation_backbones_per_epoch.png": "results/ablations/ablation_backbones_per_epoch.png",
    "ablation_epochs_per_epoch.png": "results/ablations/ablation_epochs_per_epoch.png",
}


def on_files(files: Files, config: Any) -> Files:
    root = Path(config["config_file_path"]).parent
    published = {path.relative_to(root).as_posix(): path for path in sorted((root / RESULTS).rglob("*.png"))}
    # a plot that is not written yet (an ablation not run) is not linked by its results file either
    published |= {alias: root / target for alias, target in ALIASES.items() if (root / target).is_file()}
    for uri, path in published.items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
