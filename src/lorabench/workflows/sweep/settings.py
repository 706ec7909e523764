"""The objective a sweep's trials share, from what it was asked to do (core.config.SweepSettings, where the CLI
reads its flags without importing the sweep), resolved and checked before any trial."""

from __future__ import annotations

from lorabench.core.config import SweepSettings, resolve_config
from lorabench.data.sources import load_splits
from lorabench.models.weights import resolve_source
from lorabench.workflows.sweep.objective import Objective
from lorabench.workflows.sweep.space import STUDY_SPACE, load_space


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
