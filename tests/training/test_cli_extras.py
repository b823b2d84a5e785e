"""Without the training extras (scipy, scikit-learn, ...), as in the environment `scripts/serve` makes, every
training verb still shows its --help, and a verb that needs an extra ends in one line naming the missing module and
the install command, exit code 2, no traceback: through `pneumonia VERB` and `python -m training VERB` alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import EXTRAS_INSTALL

REPO_ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: a finder ahead of the real ones answers the extras as a missing install does.
BLOCKED_RUN = """
import runpy, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("scipy", "sklearn", "matplotlib", "tf2onnx", "tqdm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_without_extras(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, module, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)  # fmt: skip


@pytest.mark.parametrize("entry", [("pneumonia_cli",), ("training",)])
@pytest.mark.parametrize("verb", ["adapt", "site-report", "calibrate"])
def test_help_works_without_the_training_extras(entry, verb):
    done = run_without_extras(*entry, verb, "--help")
    assert done.returncode == 0, done.stderr
    assert "--bundle BUNDLE" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize("entry", [("pneumonia_cli",), ("training",)])
def test_a_verb_that_needs_scipy_says_how_to_install_it(entry, tmp_path):
    done = run_without_extras(*entry, "calibrate", "--bundle", str(tmp_path / "bundle"), "--images", str(tmp_path),
                              "--out", str(tmp_path / "out"))  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "scipy is not installed" in lines[0] and EXTRAS_INSTALL in lines[0]
    assert not (tmp_path / "out").exists()
