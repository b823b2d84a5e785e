"""A lone request uses every available core; overlapping requests one thread each; the container's limit holds."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from pneumonia.inference import OnnxClassifier, available_cpus


def test_the_cgroup_quota_caps_the_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a limit of one CPU
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two threads can be busy
    assert available_cpus(tmp_path) == min(cores, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == cores
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1
    assert available_cpus(tmp_path / "absent") == cores


def test_a_lone_run_is_wide_and_overlapping_runs_are_narrow(loaded_service):
    """Which session each run used, recorded on the real sessions: one call alone gets the wide one; a call
    made while another is in flight gets the narrow one, and both give the same probabilities."""
    from pneumonia.bundle import ONNX_FILENAME

    model = loaded_service.model
    classifier = OnnxClassifier(model.bundle_dir / ONNX_FILENAME, model.metadata, threads=2)
    batch = np.zeros((1, *model.metadata.input_size, 3), np.float32)
    used: list[str] = []
    inside, release = threading.Event(), threading.Event()
    release.set()  # no run waits until the overlap below
    sessions = {"wide": classifier.session, "narrow": classifier._narrow}
    for name, session in sessions.items():
        real = session.run

        def recording(outputs, feeds, _real=real, _name=name):
            used.append(_name)
            if _name == "wide" and not release.is_set():
                inside.set()
                release.wait(30)
            return _real(outputs, feeds)

        session.run = recording
    alone = classifier.predict(batch)
    assert used == ["wide"]
    first = threading.Thread(target=classifier.predict, args=(batch,))
    used.clear()
    release.clear()
    first.start()
    assert inside.wait(30)
    overlapping = classifier.predict(batch)  # while the first is still in its run
    release.set()
    first.join(30)
    assert used == ["wide", "narrow"]
    np.testing.assert_allclose(overlapping, alone, atol=1e-6)
    assert classifier.predict(batch) is not None and used[-1] == "wide"  # alone again: wide again


def test_a_run_is_narrow_while_another_image_is_being_decoded_or_checked(loaded_service):
    """`working()` marks a whole image's scoring: a run while another image is inside it (decoding, checks,
    no run of its own yet) uses the narrow session, so the wide pool never competes with that image's work;
    the image's own run inside its own `working()` is still a lone run."""
    from pneumonia.bundle import ONNX_FILENAME

    model = loaded_service.model
    classifier = OnnxClassifier(model.bundle_dir / ONNX_FILENAME, model.metadata, threads=2)
    batch = np.zeros((1, *model.metadata.input_size, 3), np.float32)
    used: list[str] = []
    for name, session in {"wide": classifier.session, "narrow": classifier._narrow}.items():
        real = session.run

        def recording(outputs, feeds, _real=real, _name=name):
            used.append(_name)
            return _real(outputs, feeds)

        session.run = recording
    with classifier.working():
        classifier.predict(batch)  # its own image: alone
        with classifier.working():  # a second image arrives and is being decoded
            classifier.predict(batch)
        classifier.predict(batch)  # the second has left
    assert used == ["wide", "narrow", "wide"]


def test_the_service_and_the_library_mark_each_image_in_progress(loaded_service, monkeypatch):
    """Model.predict and the service's /predict path both score inside `working()`."""
    from pneumonia.inference import OnnxClassifier as Classifier

    seen: list[int] = []
    real_run = Classifier._run

    def recording(self, batch, names):
        seen.append(self._working)
        return real_run(self, batch, names)

    monkeypatch.setattr(Classifier, "_run", recording)
    from pneumonia.labels import resolve_decision

    sample = sorted((Path(__file__).resolve().parents[1] / "data" / "samples").glob("*/*.jpeg"))[0]
    loaded_service.model.predict(sample, policy="warn")  # the tiny bundle's check refuses real films
    decision = resolve_decision(loaded_service.metadata)
    loaded_service._analyse_sync(sample.read_bytes(), decision, "warn", None, False, None)
    assert seen == [1, 1]
