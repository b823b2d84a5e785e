"""Training policy: tf.data input with augmentation, class weights, phases, checkpoints, resume, budgets."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.backbones import Backbone, build_classifier, freeze_backbone
from training.config import TrainConfig
from training.data import DecodedSet, class_weights
from training.layout import (
    BEST_CHECKPOINT,
    DONE_MARKER,
    HISTORY_CSV,
    SPENT_SECONDS,
    read_history,
    read_training_summary,
)

log = logging.getLogger(__name__)


def augmentation(config: TrainConfig, seed: int) -> keras.Sequential | None:
    """Geometric and intensity augmentation as Keras preprocessing layers, applied in the tf.data pipeline.

    Kept out of the exported model on purpose: the served graph then holds only what inference needs.
    Intensity changes (contrast, brightness, gamma, blur) matter as much as geometry here: X-rays from other
    machines differ mostly in exposure and processing, which is what validation alone would not show.
    """
    strength = config.augment_strength
    if strength == 0:  # the no-augmentation ablation arm: several Keras layers refuse a zero factor
        return None
    steps: list[keras.layers.Layer] = [
        keras.layers.RandomRotation(0.03 * strength, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom((-0.15 * strength, 0.1 * strength), fill_mode="constant", seed=seed + 1),
        keras.layers.RandomTranslation(0.06 * strength, 0.06 * strength, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomContrast(0.3 * strength, value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomBrightness(0.15 * strength, value_range=(0, 255), seed=seed + 4),
        RandomGamma(0.35 * strength, seed=seed + 5),
        keras.layers.RandomGaussianBlur(
            factor=0.5 * strength, kernel_size=3, sigma=1.0, value_range=(0, 255), seed=seed + 6
        ),
    ]
    return keras.Sequential(steps, name="augmentation")


class RandomGamma(keras.layers.Layer):
    """x -> 255 * (x/255) ** gamma, gamma log-uniform in [exp(-f), exp(f)] per image. Training only."""

    def __init__(self, factor: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training or self.factor <= 0:
            return images
        batch = keras.ops.shape(images)[0]
        log_gamma = keras.random.uniform((batch, 1, 1, 1), -self.factor, self.factor, seed=self.generator)
        scaled = keras.ops.clip(images / 255.0, 1e-6, 1.0)
        return 255.0 * keras.ops.power(scaled, keras.ops.exp(log_gamma))


def make_dataset(
    data: DecodedSet,
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augment: keras.Sequential | None = None,
    balance: bool = False,
) -> tf.data.Dataset:
    """In-memory decoded images -> batched float32 (N, H, W, 3) 0..255 with labels (N, 1); prefetched.

    `balance` (training only): each epoch draws N images, half from each class (the minority class repeats).
    """
    if training and balance:
        dataset = _balanced(data, seed)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((data.images, data.labels.astype("float32")[:, None]))
        if training:
            dataset = dataset.shuffle(len(data.labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if training and augment is not None:
        dataset = dataset.map(
            lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 255.0), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _balanced(data: DecodedSet, seed: int) -> tf.data.Dataset:
    """Class-balanced resampling: each class reshuffled and repeated, drawn 50/50, N draws per epoch."""
    class_weights(data.labels)  # raises when a class is missing: there would be nothing to balance
    per_class = []
    for c in (0, 1):
        images = data.images[data.labels == c]
        labels = np.full((len(images), 1), c, dtype="float32")
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        per_class.append(dataset.shuffle(len(images), seed=seed + c, reshuffle_each_iteration=True).repeat())
    return tf.data.Dataset.sample_from_datasets(per_class, weights=[0.5, 0.5], seed=seed).take(len(data.labels))


def loss_class_weights(config: TrainConfig, labels: np.ndarray) -> dict[int, float] | None:
    """Keras class weights: inverse frequency for 'balanced'; none for 'none' and for 'resample' (the data is balanced)."""
    return class_weights(labels) if config.class_weighting == "balanced" else None


class WallClockBudget(keras.callbacks.Callback):
    """Stop training once `minutes` have passed (checked every batch), so backbones get equal time."""

    def __init__(self, minutes: float | None, already_spent_s: float = 0.0):
        super().__init__()
        self.budget_s = None if minutes is None else minutes * 60.0
        self.already_spent_s = already_spent_s
        self.started = time.monotonic()
        self.exhausted = False

    def elapsed_s(self) -> float:
        return self.already_spent_s + time.monotonic() - self.started

    def on_train_batch_end(self, batch, logs=None):
        if self.budget_s is not None and self.elapsed_s() >= self.budget_s and not self.exhausted:
            self.exhausted = True
            self.model.stop_training = True
            log.info("wall-clock budget of %.1f min reached; stopping after validation", self.budget_s / 60)


class StressAucLog(keras.callbacks.Callback):
    """Adds validation ROC-AUC under each stress perturbation (training.stress) to every epoch's logs, so
    history.csv shows where robustness stops improving. Costs one prediction pass per perturbation."""

    def __init__(self, val: DecodedSet):
        super().__init__()
        self.val = val

    def on_epoch_end(self, epoch, logs=None):
        from sklearn.metrics import roc_auc_score

        from training.stress import perturbed_predictions

        if logs is None:
            return
        predictions = perturbed_predictions(self.val.images, lambda images: predict_probabilities(self.model, images))
        aucs = {name: float(roc_auc_score(self.val.labels, p)) for name, p in predictions.items()}
        logs.update({f"stress_auc_{name}": auc for name, auc in aucs.items()})
        logs["stress_min_auc"] = min(aucs.values())


class ElapsedTimeLog(keras.callbacks.Callback):
    """Adds cumulative wall-clock seconds to each epoch's logs (so history.csv can be plotted against time)."""

    def __init__(self, clock: WallClockBudget):
        super().__init__()
        self.clock = clock

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["elapsed_s"] = round(self.clock.elapsed_s(), 1)


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def fit_backbone(backbone: Backbone, train: DecodedSet, val: DecodedSet, model_dir: Path, config: TrainConfig) -> dict:
    """Train one backbone into `model_dir`, resuming from its backup if interrupted. Returns the summary."""
    model_dir.mkdir(parents=True, exist_ok=True)
    finished = read_training_summary(model_dir)
    if finished:
        log.info("%s already trained (%s); skipping", backbone.name, model_dir / DONE_MARKER)
        return finished

    keras.utils.set_random_seed(config.seed)
    pretrained = config.weights != "none"
    model = build_classifier(
        backbone,
        config.image_size,
        weights=None if not pretrained else config.weights,
        dropout=config.dropout,
        bn_momentum=None if pretrained else config.bn_momentum,
    )
    train_ds = make_dataset(
        train, config.batch_size, training=True, seed=config.seed, augment=augmentation(config, config.seed),
        balance=config.class_weighting == "resample",
    )  # fmt: skip
    val_ds = make_dataset(val, config.batch_size, training=False, seed=config.seed)
    weights = loss_class_weights(config, train.labels)
    spent_file = model_dir / SPENT_SECONDS
    clock = WallClockBudget(config.budget_minutes, float(spent_file.read_text()) if spent_file.is_file() else 0.0)
    verbose = 1 if sys.stdout.isatty() else 2

    # (name, last epoch, learning rate, base layers left trainable: None = all, 0 = frozen base)
    phases: list[tuple[str, int, float, int | None]] = [("train", config.epochs, config.learning_rate, None)]
    if pretrained:  # head on a frozen base first, then fine-tune the top of the base with a low rate
        head_epochs = min(config.head_epochs, config.epochs)
        phases = [
            ("head", head_epochs, config.learning_rate, 0),
            ("finetune", config.epochs, config.fine_tune_learning_rate, config.fine_tune_layers),
        ]
    start_epoch = 0
    for index, (phase, until_epoch, learning_rate, trainable_top) in enumerate(phases):
        phase_done = model_dir / f"phase_{phase}.done"
        if phase_done.is_file():  # finished before an interruption: not trained again
            start_epoch = until_epoch
            continue
        if index > 0 and (model_dir / BEST_CHECKPOINT).is_file():  # a later phase goes on from the best so far
            model = keras.models.load_model(model_dir / BEST_CHECKPOINT, compile=False)
        if trainable_top is not None:
            freeze_backbone(model, trainable_top_layers=trainable_top)
        _compile(model, learning_rate)
        best_so_far = max((row["val_auc"] for row in read_history(model_dir) if "val_auc" in row), default=None)
        callbacks = [
            keras.callbacks.BackupAndRestore(str(model_dir / f"backup_{phase}")),
            keras.callbacks.ModelCheckpoint(  # a later phase must beat the earlier phases' best to overwrite it
                str(model_dir / BEST_CHECKPOINT),
                monitor="val_auc",
                mode="max",
                save_best_only=True,
                initial_value_threshold=best_so_far,
            ),
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config.patience),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=2, min_lr=1e-6),
            *([StressAucLog(val)] if config.stress_each_epoch else []),  # before CSVLogger, which writes its logs
            clock,
            ElapsedTimeLog(clock),
            keras.callbacks.CSVLogger(str(model_dir / HISTORY_CSV), append=True),
        ]
        if until_epoch > start_epoch and not clock.exhausted:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=until_epoch,
                initial_epoch=start_epoch,
                class_weight=weights,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the tf.data pipeline shuffles
            )
        spent_file.write_text(f"{clock.elapsed_s():.1f}")
        phase_done.touch()
        start_epoch = until_epoch

    history = read_history(model_dir)
    best = max(history, key=lambda row: row.get("val_auc", float("-inf"))) if history else {}
    summary = {
        "backbone": backbone.name,
        "epochs_run": len(history),
        "best_epoch": int(best.get("epoch", -1)) + 1,
        "best_val_auc_during_training": best.get("val_auc"),
        "train_seconds": round(clock.elapsed_s(), 1),
        "budget_minutes": config.budget_minutes,
        "stopped_by_budget": clock.exhausted,
        "parameters": int(model.count_params()),
    }
    (model_dir / DONE_MARKER).write_text(json.dumps(summary, indent=2))
    return summary


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W, 3) uint8/float -> (N,) P(pneumonia)."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(lambda x: tf.cast(x, tf.float32))
    return model.predict(dataset, verbose=0).reshape(-1)
