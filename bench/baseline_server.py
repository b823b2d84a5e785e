"""The baseline: a minimal FastAPI app written the way typical notebook deployments serve a Keras classifier.

What it does, deliberately, because it is what such deployments usually do (it is the comparison point, not
a pattern to copy):
- loads the retained Keras model (`model.keras` of the same bundle) once at start-up;
- per request: reads the `UploadFile`, decodes it with PIL, converts to RGB, resizes, and calls
  `model.predict(x)` directly inside the `async def` route;
- `/explain`: `model.predict` for the probability, then keras-io's `make_gradcam_heatmap` (a new
  `keras.Model(model.inputs, [last_conv.output, model.output])` and an eager `tf.GradientTape` on every
  request) and a matplotlib-free jet overlay returned as a base64 PNG in JSON, like the service's /explain.

Run (bench does this for you): BENCH_BASELINE_MODEL_DIR=models/default uvicorn bench.baseline_server:app
"""

from __future__ import annotations

import base64
import io
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from fastapi import FastAPI, File, UploadFile
from PIL import Image

MODEL_DIR = Path(os.environ.get("BENCH_BASELINE_MODEL_DIR", "models/default"))
state: dict = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    metadata = json.loads((MODEL_DIR / "metadata.json").read_text())
    state["model"] = keras.models.load_model(MODEL_DIR / "model.keras", compile=False)
    state["size"] = (metadata["preprocessing"]["input_width"], metadata["preprocessing"]["input_height"])
    state["last_conv_layer_name"] = metadata["gradcam_layer"]
    yield
    state.clear()


app = FastAPI(title="Keras notebook-style baseline (benchmark only)", lifespan=lifespan)


@app.get("/health")
async def health():
    return {"status": "ok"}


def load_image(data: bytes):
    image = Image.open(io.BytesIO(data)).convert("RGB")
    resized = image.resize(state["size"])
    x = np.expand_dims(np.array(resized, dtype=np.float32), axis=0)  # the model scales 0..255 itself
    return image, x


@app.post("/predict")
async def predict(file: UploadFile = File(...)):
    data = await file.read()
    _, x = load_image(data)
    probability = float(state["model"].predict(x, verbose=0)[0][0])
    return {"probability": probability, "label": "PNEUMONIA" if probability >= 0.5 else "NORMAL"}


# keras-io "Grad-CAM class activation visualization" (fchollet), unchanged apart from the sigmoid head
def make_gradcam_heatmap(img_array, model, last_conv_layer_name, pred_index=None):
    # First, we create a model that maps the input image to the activations
    # of the last conv layer as well as the output predictions
    grad_model = keras.models.Model(model.inputs, [model.get_layer(last_conv_layer_name).output, model.output])

    # Then, we compute the gradient of the top predicted class for our input image
    # with respect to the activations of the last conv layer
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        if pred_index is None:
            pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]

    # This is the gradient of the output neuron (top predicted or chosen)
    # with regard to the output feature map of the last conv layer
    grads = tape.gradient(class_channel, last_conv_layer_output)

    # This is a vector where each entry is the mean intensity of the gradient
    # over a specific feature map channel
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))

    # We multiply each channel in the feature map array
    # by "how important this channel is" with regard to the top predicted class
    # then sum all the channels to obtain the heatmap class activation
    last_conv_layer_output = last_conv_layer_output[0]
    heatmap = last_conv_layer_output @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)

    # For visualization purpose, we will also normalize the heatmap between 0 & 1
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def jet(values: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> uint8 (H, W, 3), the usual 'jet' colormap without matplotlib."""
    x = values.astype(np.float32) / 255.0
    channels = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def save_and_display_gradcam(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.4) -> bytes:
    levels = (255 * np.nan_to_num(heatmap)).astype(np.uint8)
    jet_heatmap = Image.fromarray(jet(levels)).resize(image.size)
    blended = np.array(jet_heatmap, dtype=np.float32) * alpha + np.array(image, dtype=np.float32)
    superimposed = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    superimposed.save(buffer, format="PNG")
    return buffer.getvalue()


@app.post("/explain")
async def explain(file: UploadFile = File(...)):
    data = await file.read()
    image, x = load_image(data)
    model = state["model"]
    probability = float(model.predict(x, verbose=0)[0][0])
    heatmap = make_gradcam_heatmap(x, model, state["last_conv_layer_name"])
    png = save_and_display_gradcam(image, heatmap)
    return {
        "probability": probability,
        "label": "PNEUMONIA" if probability >= 0.5 else "NORMAL",
        "heatmap": base64.b64encode(png).decode("ascii"),
    }
