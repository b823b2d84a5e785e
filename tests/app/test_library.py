"""The library as a researcher uses it: `import pneumonia` with no web framework installed, one line to a
probability, the same number `POST /predict` answers; and the one command line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from tests.media import png
from tests.support import REPO_ROOT

BLOCK_WEB_FRAMEWORKS = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "starlette", "uvicorn", "app", "training"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocked())
"""


def test_model_load_predict_equals_post_predict_without_fastapi(tiny_bundle, sample_images, make_app):
    path = sample_images["PNEUMONIA"][0]
    script = BLOCK_WEB_FRAMEWORKS + (
        "import json, pneumonia\n"
        f"p = pneumonia.Model.load({str(tiny_bundle)!r}).predict({str(path)!r}, policy='warn')\n"
        "print(json.dumps({'probability': p.probability, 'label': p.label, 'threshold': p.threshold,\n"
        "                  'accepted': p.input_check.accepted, 'disclaimer': p.disclaimer}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    library = json.loads(done.stdout.strip().splitlines()[-1])

    async def served():
        app = make_app(input_check="warn")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return (await client.post("/predict", files={"file": (path.name, path.read_bytes())})).json()

    answer = asyncio.run(served())
    assert library["probability"] == pytest.approx(answer["probability"], abs=1e-6)
    assert (library["label"], library["threshold"]) == (answer["label"], answer["threshold"])
    assert library["accepted"] == answer["input_check"]["accepted"]
    assert library["disclaimer"] == answer["disclaimer"]


def test_a_refused_image_raises_with_its_verdict(tiny_bundle):
    import numpy as np
    from PIL import Image

    import pneumonia

    model = pneumonia.Model.load(tiny_bundle, explain=False)
    ramp = np.linspace(0, 255, 128, dtype=np.uint8)
    colour = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    with pytest.raises(pneumonia.ImageRefusedError) as refused:
        model.predict(png(Image.fromarray(np.ascontiguousarray(colour))))  # policy refuse, the default
    assert refused.value.code == pneumonia.ErrorCode.NOT_A_CHEST_XRAY
    assert any("colour picture" in reason for reason in refused.value.check.reasons)


def test_predict_many_keeps_order_and_reports_each_failure(tiny_bundle, sample_images, tmp_path):
    import pneumonia

    model = pneumonia.Model.load(tiny_bundle, explain=False)
    (tmp_path / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    paths = [
        sample_images["NORMAL"][0],
        tmp_path / "missing.png",
        tmp_path / "broken.jpeg",
        sample_images["PNEUMONIA"][0],
    ]
    items = list(model.predict_many(paths, batch_size=2, policy="off"))
    assert [item.source for item in items] == [str(p) for p in paths]
    assert [item.error.code.value if item.error else None for item in items] == [
        None, "unreadable_file", "corrupt_image", None]  # fmt: skip
    for item, path in zip(items, paths, strict=True):
        if item.prediction is not None:
            assert item.prediction.probability == pytest.approx(model.predict(path, policy="off").probability, abs=1e-6)


def test_the_one_command_line():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pneumonia_cli", *args], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=120)  # fmt: skip

    listing = run("--help")
    assert listing.returncode == 0 and "RESEARCH USE ONLY" in listing.stdout
    for verb in ("serve", "score", "train", "calibrate", "site-report", "population-check", "pacs", "keys"):
        assert f"  {verb} " in listing.stdout
    unknown = run("diagnose")
    assert unknown.returncode == 2 and "unknown verb 'diagnose'" in unknown.stderr
    train = run("train", "--help")
    assert train.returncode == 0 and "--data DATA" in train.stdout  # the training parser itself


def test_explanations_off_are_explained_in_the_callers_terms(sample_images):
    """A notebook that loaded the model with explain=False is told about that argument, not about a service
    setting; the service, which loads it from PNEUMONIA_EXPLAIN_ENABLED, names its setting instead."""
    from app.config import Settings
    from app.service import load_model
    from pneumonia.model import ExplainUnavailableError, Model
    from tests.support import SHIPPED_BUNDLE

    image = sample_images["NORMAL"][0]
    with pytest.raises(ExplainUnavailableError) as library:
        Model.load(SHIPPED_BUNDLE, explain=False).explain(image)
    assert "explain=False" in library.value.message and "PNEUMONIA_" not in library.value.message
    with pytest.raises(ExplainUnavailableError) as service:
        load_model(Settings(model_dir=SHIPPED_BUNDLE, explain_enabled=False)).explain(image)
    assert "PNEUMONIA_EXPLAIN_ENABLED=false" in service.value.message


@pytest.mark.parametrize(
    ("sub", "module"),
    [("explain", "bench.explain"), ("explain-latency", "bench.explain.latency"), ("ood", "bench.ood"),
     ("sessions", "bench.sessions")],
)  # fmt: skip
def test_every_benchmark_is_a_verb_of_the_one_command_line(sub, module, tmp_path):
    """Run from another folder, as the installed `pneumonia` script is: bench/ is found in the clone."""
    listing = subprocess.run([sys.executable, "-m", "pneumonia_cli", "--help"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)  # fmt: skip
    assert f"  bench {sub} " in listing.stdout
    done = subprocess.run([sys.executable, "-m", "pneumonia_cli", "bench", sub, "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} ")  # that benchmark's own parser; the alias it names
