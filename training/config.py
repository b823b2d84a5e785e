"""Training configuration: defaults, an optional TOML/JSON file, then command-line overrides."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.errors import TrainingError

OperatingPointName = Literal["youden", "max_f1", "sensitivity_95", "balanced_0.5", "stress_youden"]
BACKBONE_NAMES = ("densenet121", "resnet50", "efficientnetb0", "mobilenetv2")


class ConfigError(TrainingError):
    pass


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = list(BACKBONE_NAMES)
    image_size: int = Field(128, ge=32, le=1024)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    weights: str = Field("none", description="'imagenet', 'none' or a path to a local backbone weights file")
    seed: int = 42
    split_seed: int | None = Field(
        None, ge=0, description="Seed of the patient split when it must differ from `seed` (None: `seed`)"
    )
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    learning_rate: float = Field(1e-3, gt=0.0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0.0)
    head_epochs: int = Field(3, ge=1, description="With pretrained weights: epochs on the frozen base first")
    fine_tune_layers: int = Field(40, ge=0, description="With pretrained weights: top base layers to unfreeze")
    bn_momentum: float = Field(0.9, gt=0.0, lt=1.0, description="BatchNorm momentum when training from scratch")
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    patience: int = Field(4, ge=1)
    augment_strength: float = Field(1.0, ge=0.0, le=3.0)
    budget_minutes: float | None = Field(None, gt=0.0, description="Wall-clock training budget per backbone")
    class_weighting: Literal["balanced", "none", "resample"] = Field(
        "balanced",
        description="Class imbalance: inverse-frequency loss weights, nothing, or class-balanced resampling of the training set",
    )
    stress_each_epoch: bool = Field(
        False, description="Log validation ROC-AUC under each stress perturbation every epoch (history.csv); slower"
    )
    default_operating_point: OperatingPointName = "sensitivity_95"
    calibrate: bool = Field(
        True, description="Fit Platt scaling of the logit on validation and bake it into the export"
    )
    bootstrap_samples: int = Field(1000, ge=0)
    decode_workers: int = Field(4, ge=1)

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        names = [v.strip().lower() for v in value]
        unknown = [n for n in names if n not in BACKBONE_NAMES]
        if unknown or not names:
            raise ValueError(f"unknown backbone(s) {unknown or names}; choose from {', '.join(BACKBONE_NAMES)}")
        return names

    @field_validator("weights")
    @classmethod
    def _weights_value(cls, value: str) -> str:
        if value.lower() in ("none", "imagenet"):
            return value.lower()
        if not Path(value).is_file():
            raise ValueError(f"weights file {value} does not exist (use 'imagenet', 'none' or a file path)")
        return str(Path(value).resolve())

    @property
    def patient_split_seed(self) -> int:
        """The split's seed: held fixed by `split_seed` while `seed` varies the initialisation and augmentation."""
        return self.seed if self.split_seed is None else self.split_seed


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            text = path.read_text()
            values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper() or 'JSON'}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid training configuration:\n{exc}") from exc
