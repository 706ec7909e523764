"""What a sweep was asked to do, and the objective its trials share (resolved and checked before any trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lorabench.core.config import resolve_config, validate_as
from lorabench.data.sources import load_splits
from lorabench.models.weights import resolve_source
from lorabench.workflows.sweep.objective import Objective
from lorabench.workflows.sweep.space import STUDY_SPACE, load_space


class SweepSettings(BaseModel):
    """What `lorabench sweep` was asked to do; None means the preset's value."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="preset name, local model directory or hub id")
    data: str | None = Field(None, description="hub data set id, a directory with train/test files, or one file")
    # the data's column settings (config.DATA_COLUMNS) by key, e.g. {"label_column": "topic"}; every trial shares them
    columns: dict[str, str] = Field(default_factory=dict, description="the data's columns and text template")
    out: Path
    trials: int = Field(30, gt=0, description="finished (complete or pruned) trials wanted; the study ran 30")
    backend: Literal["optuna", "wandb", "ray"] = Field(
        "optuna", description="optuna: embedded; wandb: W&B sweep; ray: Ray Tune"
    )
    space: Path | None = Field(None, description="search-space YAML; None = the study's")
    storage: str | None = Field(None, description="Optuna storage URL; None = sqlite:///OUT/study.db")
    # A worker that stops beating (killed, its machine gone) has its trial failed and queued again by whichever
    # worker checks next, after a grace of 3 intervals. Each beat is a write to the storage.
    heartbeat_seconds: int = Field(
        60, gt=0, description="how often a running trial tells the storage its worker is alive (optuna backend)"
    )
    epochs: int | None = Field(None, gt=0, description="epochs per trial (default: the preset's)")
    max_train_rows: int | None = Field(None, gt=0, description="train each trial on the first N rows only")
    prune: bool = Field(True, description="stop hopeless trials after an epoch")
    seed: int = Field(0, description="the sampler's seed")
    address: str | None = Field(None, description="Ray cluster address; None = start a local instance")
    cpus_per_trial: float = Field(1, gt=0, description="CPUs each Ray trial reserves")
    gpus_per_trial: float = Field(0, ge=0, description="GPUs each Ray trial reserves")

    @classmethod
    def build(cls, **values) -> SweepSettings:
        """Validate, naming the first bad setting in one line."""
        return validate_as(cls, values, "sweep setting")


def make_objective(settings: SweepSettings) -> Objective:
    """Resolve the base run config and the space, and check the space's bounds against it (before any trial)."""
    space = load_space(settings.space)
    overrides = {
        "data": {"source": settings.data, "max_train_rows": settings.max_train_rows, **settings.columns},
        "train": {"epochs": settings.epochs},
    }
    base = resolve_config(settings.model, None, overrides).model_dump(mode="json")
    space.check_against(base, str(settings.space or STUDY_SPACE))
    return Objective(base, space, settings.out.resolve() / "trials")


def check_inputs(objective: Objective) -> None:
    """Read the data and find the model once, so bad input stops the sweep before it writes anything."""
    config = objective.config({})
    load_splits(config.data)
    resolve_source(config.model)
