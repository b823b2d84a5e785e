import asyncio
import shutil

import numpy as np
import pytest

from app.config import Settings
from app.service import ConcurrencyLimiter, ServiceBusyError, load_service
from pneumonia.bundle import KERAS_FILENAME, ONNX_FILENAME, PARITY_TOLERANCE, BundleError, read_metadata
from pneumonia.inference import OnnxClassifier
from pneumonia.model import self_test


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def test_tampered_onnx_is_refused_with_a_checksum_message(bundle_copy):
    with (bundle_copy / ONNX_FILENAME).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_service(Settings(model_dir=bundle_copy))


def test_tampered_keras_is_refused_even_though_explain_is_optional(bundle_copy):
    with (bundle_copy / KERAS_FILENAME).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="model.keras: checksum mismatch"):
        load_service(Settings(model_dir=bundle_copy))


def test_missing_directory_and_metadata_are_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_service(Settings(model_dir=tmp_path / "nope"))
    with pytest.raises(BundleError, match="metadata.json is missing"):
        load_service(Settings(model_dir=tmp_path))


def test_missing_keras_degrades_to_no_explanations(bundle_copy):
    (bundle_copy / KERAS_FILENAME).unlink()
    service = load_service(Settings(model_dir=bundle_copy))
    assert service.model.explainer is None and not service.explain_available
    assert KERAS_FILENAME in (service.model.explain_unavailable_reason or "")


def test_explain_disabled_skips_grad_cam(bundle_copy):
    service = load_service(Settings(model_dir=bundle_copy, explain_enabled=False))
    assert service.model.explainer is None and "disabled" in (service.model.explain_unavailable_reason or "")


def test_self_test_fails_when_onnx_and_keras_disagree(loaded_service, tiny_bundle):
    """The bundle's own model.keras with its first convolution scaled by 1.5: the probabilities of the probes
    may still saturate alike, the input check's feature statistics cannot."""
    import keras

    metadata = read_metadata(tiny_bundle)
    other = keras.models.load_model(tiny_bundle / "model.keras", compile=False)
    self_test(loaded_service.model.classifier, metadata, other, None, PARITY_TOLERANCE)  # the twin passes
    conv = next(layer for layer in other.layers if isinstance(layer, keras.layers.Conv2D))
    kernel, *rest = conv.get_weights()
    conv.set_weights([kernel * 1.5, *rest])
    with pytest.raises(BundleError, match="disagree"):
        self_test(loaded_service.model.classifier, metadata, other, None, PARITY_TOLERANCE)


def test_onnx_classifier_predicts_probabilities_for_a_batch(loaded_service):
    classifier: OnnxClassifier = loaded_service.model.classifier
    h, w = classifier.input_size
    batch = np.random.default_rng(0).uniform(0, 255, (3, h, w, 3)).astype(np.float32)
    out = classifier.predict(batch)
    assert out.shape == (3,) and np.all((out >= 0) & (out <= 1))
    with pytest.raises(ValueError):
        classifier.predict(np.zeros((1, h + 1, w, 3), np.float32))


def test_limiter_refuses_beyond_concurrency_plus_queue():
    rejected = []

    async def scenario():
        limiter = ConcurrencyLimiter(max_concurrency=1, max_queue=1, on_reject=lambda: rejected.append(1))
        release = asyncio.Event()
        running = asyncio.Event()

        async def hold():
            async with limiter.slot():
                running.set()
                await release.wait()

        first = asyncio.create_task(hold())
        await running.wait()
        second = asyncio.create_task(hold())  # waits in the queue
        await asyncio.sleep(0.01)
        assert limiter.in_flight == 2
        with pytest.raises(ServiceBusyError):
            async with limiter.slot():
                pass
        release.set()
        await asyncio.gather(first, second)
        assert limiter.in_flight == 0
        async with limiter.slot():  # capacity is back
            pass

    asyncio.run(scenario())
    assert rejected == [1]


def test_tensorflow_thread_settings_reach_a_fresh_service_process(tiny_bundle):
    """TensorFlow sizes its pools to every core unless told; the settings must apply before its first op."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, tensorflow as tf\n"
        "from app.config import Settings\n"
        "from app.service import load_service\n"
        "service = load_service(Settings())\n"
        "print(json.dumps([service.explain_available, tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads()]))\n"
    )
    env = {
        **os.environ,
        "PNEUMONIA_MODEL_DIR": str(tiny_bundle),
        "PNEUMONIA_TF_INTRA_OP_THREADS": "1",
        "PNEUMONIA_TF_INTER_OP_THREADS": "2",
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [True, 1, 2]


def _rewrite_metadata(bundle, **changes):
    from pneumonia.bundle import write_metadata

    write_metadata(bundle, read_metadata(bundle).model_copy(update=changes))


def test_a_bundle_without_explain_activation_explains_from_the_image(bundle_copy, loaded_service):
    """Bundles exported before model.onnx gained the explain_activation output still explain, the slower way."""
    _rewrite_metadata(bundle_copy, explain_activation=None)
    service = load_service(Settings(model_dir=bundle_copy))
    assert service.model.classifier.activation_name is None
    result = asyncio.run(_explain_bytes(service))
    expected = asyncio.run(_explain_bytes(loaded_service))  # the same image through the activation path
    assert result.explanation is not None and expected.explanation is not None
    np.testing.assert_allclose(result.explanation.map, expected.explanation.map, atol=1e-4)


def test_explain_activation_naming_another_layer_fails_the_self_test(bundle_copy, loaded_service):
    from pneumonia.explain import layer_at_stride

    metadata = read_metadata(bundle_copy)
    assert metadata.explain_activation is not None
    wrong = layer_at_stride(
        loaded_service.model.explainer._args[0], 16
    )  # a real layer, but not the one model.onnx outputs
    _rewrite_metadata(bundle_copy, explain_activation=metadata.explain_activation.model_copy(update={"layer": wrong}))
    with pytest.raises(BundleError, match="explain_activation"):
        load_service(Settings(model_dir=bundle_copy))


async def _explain_bytes(service):
    import io

    from PIL import Image

    from pneumonia.labels import resolve_decision
    from pneumonia.model import probe_image

    buffer = io.BytesIO()
    Image.fromarray(probe_image()).save(buffer, format="PNG")
    decision = resolve_decision(service.metadata)
    return await service.analyse(buffer.getvalue(), decision, explain=True, policy="off")
