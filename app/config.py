"""Service settings: one typed object, read from `PNEUMONIA_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pneumonia.bundle import PARITY_TOLERANCE
from pneumonia.imaging import DEFAULT_MAX_PIXELS
from pneumonia.input_check import Policy

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
PACS_OPTIONAL = ("pacs_url", "pacs_username", "pacs_password", "pacs_password_file", "pacs_token", "pacs_token_file")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PNEUMONIA_", extra="ignore", protected_namespaces=())

    model_dir: Path = Field(default=REPO_ROOT / "models" / "default", description="Bundle directory to serve.")
    max_upload_bytes: int = Field(default=20 * MiB, gt=0, description="Largest accepted request body.")
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0, description="Largest accepted decoded image (w*h).")
    onnx_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime threads for a request that runs alone (0: every core the container may use); "
        "requests that overlap others run on one thread each (pneumonia/inference.py)",
    )
    # Grad-CAM runs in TensorFlow. One thread per explanation, like ONNX Runtime's one per prediction:
    # parallelism comes from concurrent requests. Its ops on one image are small, so a pool costs more than it
    # gives (on 2 cores the map was slower with TensorFlow's default, a pool per core, in a one-off timing that
    # no results file records). 0 keeps TensorFlow's default.
    tf_intra_op_threads: int = Field(default=1, ge=0)
    tf_inter_op_threads: int = Field(default=1, ge=0)
    max_concurrency: int = Field(default=4, gt=0, description="Requests decoding/inferring at once.")
    max_queue: int = Field(default=16, ge=0, description="Requests allowed to wait; beyond that: 503.")
    cache_size: int = Field(default=256, ge=0, description="Recent predictions kept for GET /explain/{id}.")
    cache_ttl_s: float = Field(default=600.0, gt=0)
    cache_max_bytes: int = Field(default=512 * MiB, gt=0, description="Memory bound of the prediction cache.")
    cache_max_entry_bytes: int = Field(
        default=64 * MiB, gt=0, description="Largest decoded image (bytes of 8-bit pixels) kept for GET /explain/{id}."
    )
    cache_url: str | None = Field(
        default=None,
        pattern=r"^$|^(redis|rediss|unix)://",
        description="redis://host:port/db: share predictions between workers and replicas (unset or empty: in memory).",
    )
    explain_enabled: bool = True
    input_check: Policy = Field(
        default="refuse",
        description="What to do with an image that is not a frontal chest X-ray: refuse (HTTP 422 not_a_chest_xray), "
        "warn (answer, with accepted=false and the reasons in warnings) or off (no check). Per request: ?input_check=",
    )
    self_test_tolerance: float = Field(default=PARITY_TOLERANCE, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Access, rate limits and the audit trail (docs/security.md). An empty value means unset.
    api_keys_file: Path | None = Field(
        default=None,
        description="Lines KEY_ID:SHA256_HEX (python -m app.keys new KEY_ID); re-read when it changes. Set: "
        "/predict, /explain, /model, /model/card and /metrics need 'Authorization: Bearer TOKEN'.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Without keys the service serves loopback only and refuses to start on another address; "
        "true serves anyone who can reach it, on purpose.",
    )
    rate_limit: str | None = Field(
        default=None,
        description="Requests per key (per client address without keys), e.g. 120/minute; shared through "
        "Redis when PNEUMONIA_CACHE_URL is set. Unset: no limit.",
    )
    audit_log: Path | None = Field(
        default=None, description="Append one JSON line per scoring request to this file (schema: docs/security.md)."
    )

    # The PACS worker (python -m app.pacs; docs/pacs.md). It scores with the settings above (model_dir, input_check,
    # the thread and pixel limits). Credentials come from here or from files, never from the command line.
    pacs_url: str | None = Field(default=None, description="DICOMweb root, e.g. http://orthanc:8042/dicom-web.")
    pacs_username: str | None = Field(default=None, description="HTTP basic auth user (with a password or its file).")
    pacs_password: SecretStr | None = None
    pacs_password_file: Path | None = Field(default=None, description="File holding the basic-auth password.")
    pacs_token: SecretStr | None = Field(default=None, description="Bearer token for the DICOMweb server.")
    pacs_token_file: Path | None = Field(default=None, description="File holding the bearer token.")
    pacs_batch_size: int = Field(default=8, gt=0, le=256, description="Instances retrieved and scored per batch.")
    pacs_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one DICOMweb request.")

    @field_validator("api_keys_file", "audit_log", "rate_limit", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*PACS_OPTIONAL, mode="before")
    @classmethod
    def _empty_pacs_value_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        if value is not None:
            from app.ratelimit import parse_rate

            parse_rate(value)  # ValueError -> a settings validation error naming the variable
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
