import io

import numpy as np
import pytest
from PIL import Image

from app.bundle import PARITY_TOLERANCE
from app.gradcam import JET, encode_png, overlay
from app.imaging import to_model_input
from app.service import probe_image


def test_overlay_is_rgb_at_the_image_size():
    gray = np.full((50, 70), 100, np.uint8)
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[3, 3] = 1.0
    out = overlay(gray, heatmap, alpha=0.4)
    assert out.shape == (50, 70, 3) and out.dtype == np.uint8
    # hot centre is reddish, cold corner is the gray image tinted blue
    centre, corner = out[25, 35].astype(int), out[0, 0].astype(int)
    assert centre[0] > centre[2]
    assert corner[2] > corner[0]


def test_overlay_alpha_zero_returns_the_image():
    gray = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    out = overlay(gray, np.random.default_rng(0).random((4, 4)), alpha=0.0)
    assert np.array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


@pytest.mark.parametrize(
    "gray, heatmap",
    [
        (np.zeros((8, 8), np.float32), np.zeros((2, 2))),  # gray not uint8
        (np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2))),  # gray not 2-D
        (np.zeros((8, 8), np.uint8), np.zeros((2, 2, 1))),  # heatmap not 2-D
        (np.zeros((8, 8), np.uint8), np.array([[0.0, np.nan]])),  # NaN
        (np.zeros((8, 8), np.uint8), np.array([[0.0, 1.5]])),  # above 1
        (np.zeros((8, 8), np.uint8), np.array([[-0.1, 0.5]])),  # below 0
        (np.zeros((8, 8), np.uint8), np.zeros((2, 2), np.uint8)),  # integer heatmap
    ],
)
def test_overlay_rejects_invalid_input(gray, heatmap):
    with pytest.raises(ValueError):
        overlay(gray, heatmap)


def test_jet_lut_runs_blue_to_red():
    assert JET.shape == (256, 3) and JET.dtype == np.uint8
    assert JET[0, 2] > JET[0, 0] and JET[255, 0] > JET[255, 2]


def test_encode_png_round_trips():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(rgb))))
    assert np.array_equal(decoded, rgb)


def test_gradcam_heatmap_shape_range_and_single_trace(loaded_service):
    cam = loaded_service.gradcam
    assert cam is not None
    size = loaded_service.metadata.input_size
    one = to_model_input(probe_image(), size)[None]
    maps = cam.heatmap(one)
    assert maps.ndim == 3 and maps.shape[0] == 1 and maps.dtype == np.float32
    assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0
    traces = cam.tracing_count
    cam.heatmap(one)
    cam.heatmap(np.repeat(one, 3, axis=0))  # another batch size: same signature, no retrace
    assert cam.tracing_count == traces


def test_gradcam_logits_match_the_keras_logit_layer(loaded_service):
    """The map is built from the logit (pre-sigmoid): sigmoid(logit) must be the served probability."""
    size = loaded_service.metadata.input_size
    batch = to_model_input(probe_image(), size)[None]
    _, logits = loaded_service.gradcam.heatmap_and_logits(batch)
    probability = loaded_service.classifier.predict(batch)[0]
    assert 1.0 / (1.0 + np.exp(-logits[0])) == pytest.approx(probability, abs=PARITY_TOLERANCE)


def test_gradcam_rejects_wrong_input_shape(loaded_service):
    with pytest.raises(ValueError):
        loaded_service.gradcam.heatmap(np.zeros((1, 7, 7, 3), np.float32))
