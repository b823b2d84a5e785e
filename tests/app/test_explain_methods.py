"""pneumonia.explain: every saliency method's contract, the class sign, the overlay and its colour bar (beside the
image, never over it: issue 20)."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.bundle import PARITY_TOLERANCE
from pneumonia.explain import (
    BASELINES,
    JET,
    METHOD_NAMES,
    METHODS,
    CentralBlob,
    Explainer,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomMap,
    add_colour_bar,
    colour_bar_width,
    encode_map,
    encode_png,
    layer_at_stride,
    overlay,
)
from pneumonia.imaging import to_model_input
from pneumonia.model import probe_image


# --- a hand-built model whose every feature pushes towards PNEUMONIA ----------------------------------------
@pytest.fixture(scope="module")
def positive_model():
    """16x16 input -> 'feat' (4x4x2, relu, positive kernel) -> 'late' (2x2) -> mean -> 'logit' (positive)."""
    import keras

    inputs = keras.Input((16, 16, 3), name="image")
    feat = keras.layers.Conv2D(2, 4, strides=4, activation="relu", name="feat", kernel_initializer="ones")(inputs)
    late = keras.layers.Conv2D(2, 2, strides=2, activation="relu", name="late", kernel_initializer="ones")(feat)
    pooled = keras.layers.GlobalAveragePooling2D()(late)
    logit = keras.layers.Dense(1, name="logit", kernel_initializer="ones")(pooled)
    return keras.Model(inputs, keras.layers.Activation("sigmoid", name="probability")(logit))


def _bright_corner() -> np.ndarray:
    image = np.zeros((1, 16, 16, 3), np.float32)
    image[:, :8, :8] = 1.0  # only the top-left quarter has signal
    return image


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM])
def test_pneumonia_map_follows_the_evidence_and_normal_map_is_empty(positive_model, cls):
    method = cls(positive_model, "feat", "logit")
    image = _bright_corner()
    pneumonia, normal = method(image, 1.0)[0], method(image, -1.0)[0]
    assert pneumonia.shape == (16, 16) and pneumonia.max() == pytest.approx(1.0)
    assert pneumonia[:6, :6].min() > pneumonia[10:, 10:].max()  # hot where the signal is
    assert np.all(normal == 0.0)  # no feature lowers the logit: nothing is evidence for NORMAL


def test_negating_the_logit_swaps_the_classes(positive_model):
    """The NORMAL map of a model equals the PNEUMONIA map of the same model with its logit negated."""
    import keras

    negated = keras.models.clone_model(positive_model)
    negated.set_weights(positive_model.get_weights())
    kernel, bias = negated.get_layer("logit").get_weights()
    negated.get_layer("logit").set_weights([-kernel, -bias])
    image = _bright_corner()
    original = GradCAM(positive_model, "feat", "logit")(image, 1.0)
    flipped = GradCAM(negated, "feat", "logit")(image, -1.0)
    np.testing.assert_allclose(flipped, original, atol=1e-6)


def test_multi_layer_fusion_reads_every_layer(positive_model):
    method = LayerCAM(positive_model, ("feat", "late"), "logit")
    assert method.layers == ("feat", "late") and method.native_size == (4, 4)
    maps = method(np.repeat(_bright_corner(), 3, axis=0), [1.0, -1.0, 1.0])
    assert maps.shape == (3, 16, 16) and maps[0].max() == pytest.approx(1.0) and np.all(maps[1] == 0)


def test_a_missing_layer_is_a_value_error(positive_model):
    with pytest.raises(ValueError, match="not found"):
        GradCAM(positive_model, "no_such_layer", "logit")


def test_layer_at_stride_finds_the_last_layer_of_that_resolution(positive_model):
    assert layer_at_stride(positive_model, 4) == "feat" and layer_at_stride(positive_model, 8) == "late"
    with pytest.raises(ValueError):
        layer_at_stride(positive_model, 3)


def test_signs_other_than_plus_or_minus_one_are_refused(positive_model):
    with pytest.raises(ValueError):
        GradCAM(positive_model, "feat", "logit")(_bright_corner(), 0.5)


def test_central_blob_is_the_same_centred_map_for_every_image():
    blob = CentralBlob((16, 16, 3))
    maps = blob(np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32), -1.0)
    assert np.array_equal(maps[0], maps[1]) and maps.max() <= 1.0
    assert maps[0, 7:9, 7:9].min() > maps[0, 0, 0]


def test_random_map_is_seeded_by_the_image():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 255, (2, 1, 16, 16, 3)).astype(np.float32)
    random = RandomMap((16, 16, 3), grid=(4, 4))
    assert np.array_equal(random(a), random(a)) and not np.array_equal(random(a), random(b))
    assert random(a).min() == 0.0 and random(a).max() == pytest.approx(1.0)


# --- every served method on the tiny bundle ---------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("explained_class", ["PNEUMONIA", "NORMAL"])
def test_every_method_gives_a_map_at_the_model_input_in_0_1(loaded_service, name, explained_class):
    explainer: Explainer = loaded_service.model.explainer
    size = loaded_service.metadata.input_size
    gray = probe_image()
    batch = to_model_input(gray, size)[None]
    result = explainer.explain(gray, batch, explained_class, name)
    assert result.method == name and result.explained_class == explained_class
    assert result.values.shape == size and result.values.dtype == np.float32
    assert np.all(np.isfinite(result.values)) and result.values.min() >= 0.0 and result.values.max() <= 1.0
    assert len(result.layers) == len(METHODS[name][1])
    png = np.asarray(Image.open(io.BytesIO(result.png)))
    height, width = gray.shape
    assert png.shape == (height, width + colour_bar_width(height), 3)
    # the image's columns are the overlay itself: the colour bar hides none of it
    assert np.array_equal(png[:, :width], overlay(gray, result.values))


def test_unknown_method_is_refused(loaded_service):
    with pytest.raises(ValueError, match="unknown explanation method"):
        loaded_service.model.explainer.method("saliency_by_vibes")


def test_gradcam_traces_once_per_method(loaded_service):
    cam = loaded_service.model.explainer.method("gradcam")
    one = to_model_input(probe_image(), loaded_service.metadata.input_size)[None]
    cam(one)
    traces = cam.tracing_count
    cam(one, -1.0)
    cam(np.repeat(one, 3, axis=0))  # another batch size and sign: same signature, no retrace
    assert cam.tracing_count == traces


def test_gradcam_logits_match_the_served_probability(loaded_service):
    """The map is built from the logit (pre-sigmoid): sigmoid(logit) must be the served probability."""
    batch = to_model_input(probe_image(), loaded_service.metadata.input_size)[None]
    _, logits = loaded_service.model.explainer.method("gradcam").maps_and_logits(batch)
    probability = loaded_service.model.classifier.predict(batch)[0]
    assert 1.0 / (1.0 + np.exp(-logits[0])) == pytest.approx(probability, abs=PARITY_TOLERANCE)


def test_gradcam_rejects_wrong_input_shape(loaded_service):
    with pytest.raises(ValueError):
        loaded_service.model.explainer.method("gradcam")(np.zeros((1, 7, 7, 3), np.float32))


def test_encode_map_is_little_endian_float32_row_major():
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 5
    decoded = np.frombuffer(base64.b64decode(encode_map(values)), dtype="<f4").reshape(2, 3)
    assert np.array_equal(decoded, values)


# --- drawing ------------------------------------------------------------------------------------------------
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


def test_colour_bar_stands_in_a_strip_beside_the_image_red_at_the_top_to_blue_at_the_bottom():
    rgb = np.full((400, 300, 3), 128, np.uint8)
    out = add_colour_bar(rgb)
    strip = colour_bar_width(400)
    assert strip == 40 and out.shape == (400, 300 + strip, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :300], rgb)  # the image untouched: nothing drawn over it
    assert np.array_equal(rgb, np.full_like(rgb, 128))  # the input too
    bar = out[:, 300:]
    column = bar[:, strip // 8 + 1]  # inside the bar
    coloured = np.flatnonzero(np.ptp(column.astype(int), axis=1) > 100)  # saturated jet colours, not grey/black
    assert 0.45 * 400 < len(coloured) <= 0.5 * 400 + 2
    top, bottom = column[coloured[0]].astype(int), column[coloured[-1]].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]
    assert (bar[:50] == 0).all() and (bar[-50:] == 0).all()  # black above and below the bar
    white = np.flatnonzero((bar.min(axis=2) > 200).any(axis=0))
    assert white.size and white.min() > strip // 8 + strip // 4  # the labels, right of the bar


@pytest.mark.parametrize("height", [1, 6, 40, 127, 128, 1024, 3000])
def test_colour_bar_strip_width_follows_the_height_only(height):
    rgb = np.zeros((height, 7, 3), np.uint8)
    assert colour_bar_width(height) == max(16, height // 10)
    assert add_colour_bar(rgb).shape == (height, 7 + colour_bar_width(height), 3)


def test_jet_lut_runs_blue_to_red():
    assert JET.shape == (256, 3) and JET.dtype == np.uint8
    assert JET[0, 2] > JET[0, 0] and JET[255, 0] > JET[255, 2]


@pytest.mark.parametrize("shape", [(20, 30, 3), (1, 1, 3), (1, 40, 3), (40, 1, 3)])
def test_encode_png_round_trips(shape):
    rgb = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    png = encode_png(rgb)
    Image.open(io.BytesIO(png)).verify()  # chunk CRCs and structure
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), rgb)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)]
)
def test_encode_png_refuses_what_is_not_rgb_uint8(bad):
    with pytest.raises(ValueError):
        encode_png(bad)


# --- starting from model.onnx's activation (bundle explain_activation) -------------------------------------
@pytest.mark.parametrize("cls", [GradCAM, HiResCAM, LayerCAM])
def test_a_map_from_the_root_activation_is_the_map_from_the_image(positive_model, cls):
    import keras

    image = np.random.default_rng(3).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    full = cls(positive_model, ("feat", "late"), "logit")
    tail = cls(positive_model, ("feat", "late"), "logit", root="feat")
    assert tail.accepts_activation and not full.accepts_activation
    activation = np.asarray(keras.Model(positive_model.input, positive_model.get_layer("feat").output)(image))
    for sign in (1.0, -1.0):
        maps, logits = tail.maps_from_activation(activation, sign)
        expected, expected_logits = full.maps_and_logits(image, sign)
        np.testing.assert_allclose(maps, expected, atol=1e-6)
        np.testing.assert_allclose(logits, expected_logits, rtol=1e-6)


def test_no_start_from_an_activation_that_a_skip_connection_jumps():
    """A layer is a valid root only if everything after it depends on it alone; else the image path is used."""
    import keras

    inputs = keras.Input((16, 16, 3))
    first = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="first")(inputs)
    mid = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="mid")(first)
    joined = keras.layers.Add(name="skip")([mid, first])
    pooled = keras.layers.GlobalAveragePooling2D()(joined)
    model = keras.Model(inputs, keras.layers.Dense(1, name="logit")(pooled))
    method = GradCAM(model, "skip", "logit", root="mid")
    assert not method.accepts_activation
    with pytest.raises(ValueError, match="cannot start from an activation"):
        method.maps_from_activation(np.zeros((1, 16, 16, 2), np.float32))
    assert method(np.ones((1, 16, 16, 3), np.float32)).shape == (1, 16, 16)  # the image path still works


# SmoothGrad adds its noise to the image and the baselines ignore the model: they always run from the image.
FROM_ACTIVATION = [name for name in METHOD_NAMES if name not in (*BASELINES, "smoothgrad_gradcam")]


@pytest.mark.parametrize("name", FROM_ACTIVATION)
def test_served_maps_are_the_same_from_the_onnx_activation(loaded_service, name):
    """/explain feeds model.onnx's explain_activation to model.keras's later layers: same map as from the image."""
    gray = probe_image()
    batch = to_model_input(gray, loaded_service.metadata.input_size)[None]
    _, _, activation = loaded_service.model.classifier.run_with_activation(batch)
    assert activation is not None and loaded_service.metadata.explain_activation is not None
    assert loaded_service.model.explainer.method(name).accepts_activation  # so the comparison below takes the tail path
    for explained_class in ("PNEUMONIA", "NORMAL"):
        from_image = loaded_service.model.explainer.explain(gray, batch, explained_class, name)
        from_activation = loaded_service.model.explainer.explain(
            gray, batch, explained_class, name, activation=activation
        )
        np.testing.assert_allclose(from_activation.values, from_image.values, atol=1e-4)
