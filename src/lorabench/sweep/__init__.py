"""Hyperparameter sweeps: Bayesian search over a search space, one `lorabench train` per trial.

Each backend module (`optuna_backend`, `wandb_backend`, `ray_backend`) has one function,
`run(settings, objective) -> list[TrialRecord]`; this module resolves the settings and the space, picks the
backend, and `report.write` turns the trials into trials.csv, best.json, charts and an HTML page.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorabench.config import resolve_config
from lorabench.errors import LorabenchError
from lorabench.sweep.objective import METRIC, Objective, TrialRecord
from lorabench.sweep.space import STUDY_SPACE, SearchSpace, load_space


class SweepSettings(BaseModel):
    """What `lorabench sweep` was asked to do; None means the preset's value."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    data: str | None = None
    out: Path
    trials: int = Field(30, gt=0, description="finished (complete or pruned) trials wanted; the study ran 30")
    backend: Literal["optuna", "wandb", "ray"] = "optuna"
    space: Path | None = Field(None, description="search-space YAML; None = the study's")
    storage: str | None = Field(None, description="Optuna storage URL; None = sqlite:///OUT/study.db")
    epochs: int | None = Field(None, gt=0)
    max_train_rows: int | None = Field(None, gt=0)
    prune: bool = True
    seed: int = Field(0, description="the sampler's seed")
    address: str | None = Field(None, description="Ray cluster address; None = start a local instance")
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)

    @classmethod
    def build(cls, **values) -> SweepSettings:
        """Validate, naming the first bad setting in one line."""
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise LorabenchError(f"invalid sweep setting '{where}': {first['msg']}") from None


def make_objective(settings: SweepSettings) -> Objective:
    """Resolve the base run config and the space, and check the space's bounds against it (before any trial)."""
    space = load_space(settings.space)
    overrides = {
        "data": {"source": settings.data, "max_train_rows": settings.max_train_rows},
        "train": {"epochs": settings.epochs},
    }
    base = resolve_config(settings.model, None, overrides).model_dump(mode="json")
    space.check_against(base, str(settings.space or STUDY_SPACE))
    return Objective(base, space, settings.out.resolve() / "trials")


def check_inputs(objective: Objective) -> None:
    """Read the data and find the model once, so bad input stops the sweep before it writes anything."""
    from lorabench.data import load_splits
    from lorabench.model import resolve_source

    config = objective.config({})
    load_splits(config.data)
    resolve_source(config.model)


def sweep(settings: SweepSettings) -> dict:
    """Run (or resume) the sweep and write its report; returns the best trial and where everything is."""
    import optuna

    from lorabench.sweep import report

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # lorabench reports each trial in its own lines
    objective = make_objective(settings)
    check_inputs(objective)
    backend = importlib.import_module(f"lorabench.sweep.{settings.backend}_backend")
    records = backend.run(settings, objective)
    return report.write(settings.out, records, objective, settings.backend)


__all__ = [
    "METRIC",
    "Objective",
    "SearchSpace",
    "SweepSettings",
    "TrialRecord",
    "load_space",
    "make_objective",
    "sweep",
]
