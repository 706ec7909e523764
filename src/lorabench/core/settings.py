"""Settings of commands beside the run config (`serve`, where `compare` trains), each written once: the CLI's
flags are generated from these fields. They live in core, not beside their commands, so the CLI reads the flags
without importing FastAPI, Ray and the model stack."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lorabench.core.config import validate_as

# The per-text limit's floor when it follows the run (twice its longest training text).
DEFAULT_MAX_CHARS = 2000


class ServeSettings(BaseModel):
    """What `lorabench serve` was asked to do; None means the run's own value."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="address to bind; the default accepts local clients only")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_texts: int = Field(64, ge=1, description="most texts per request (413 beyond)")
    max_chars: int | None = Field(
        None,
        ge=1,
        description=f"most characters per text (413 beyond); default twice the run's longest training text, at "
        f"least {DEFAULT_MAX_CHARS}",
    )
    threshold: float | None = Field(
        None, description="decision threshold on P(positive) for two classes (default: the run's validation-F1 one)"
    )
    batch_size: int | None = Field(
        None, ge=1, description="texts per forward pass (default: the run's eval batch size)"
    )
    max_batch: int = Field(64, ge=1, description="most texts of concurrent requests scored in one model call")
    gather_seconds: float = Field(
        0.005, ge=0, description="how long a batch waits for concurrent requests to join it, in seconds"
    )
    api_key_env: str | None = Field(
        None,
        description="environment variable holding the API key; /predict, /, /info, /metrics then need "
        "'Authorization: Bearer KEY'",
    )
    max_queued_texts: int = Field(
        1024, ge=1, description="most texts waiting to be scored (503 + Retry-After beyond); at least max_texts"
    )
    request_timeout: float = Field(30.0, gt=0, description="seconds before an unanswered request gets 504")

    @field_validator("max_queued_texts")
    @classmethod
    def _fits_a_request(cls, value: int, info: ValidationInfo) -> int:
        """A queue smaller than one allowed request would refuse that request with 503 forever."""
        max_texts = info.data.get("max_texts")
        if max_texts is not None and value < max_texts:
            raise ValueError(f"{value} is less than max_texts ({max_texts}): a full request would never fit")
        return value

    @classmethod
    def build(cls, **values) -> ServeSettings:
        """Validate, naming the first bad setting in one line."""
        return validate_as(cls, values, "serve setting")


class CompareBackend(BaseModel):
    """Where `lorabench compare` trains its members."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["local", "ray"] = Field(
        "local",
        description="local: one member after another, each in a fresh process; ray: every member as a Ray task at "
        "once, on a local Ray or the cluster at $RAY_ADDRESS",
    )
    cpus_per_member: int = Field(1, ge=1, description="CPUs each member's Ray task asks for (and its torch threads)")
    gpus_per_member: float = Field(0, ge=0, description="GPUs each member's Ray task asks for")


class PredictBackend(BaseModel):
    """Where `lorabench predict` scores."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["local", "ray"] = Field(
        "local",
        description="local: this process, one file chunk by chunk; ray: Ray Data reads the file, folder or glob of "
        "shards and model replicas score it, on a local Ray or the cluster at $RAY_ADDRESS",
    )
    replicas: int = Field(
        2, ge=1, description="model replicas (Ray actors, each loading the run once) with --backend ray"
    )
    cpus_per_replica: float = Field(1, gt=0, description="CPUs each replica asks for (and its torch threads)")
    gpus_per_replica: float = Field(0, ge=0, description="GPUs each replica asks for")
