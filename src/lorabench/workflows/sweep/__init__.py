"""Hyperparameter sweeps: Bayesian search over a search space, one `lorabench train` per trial.

Each backend module (`optuna_backend`, `wandb_backend`, `ray_backend`) has one function,
`run(settings, objective) -> list[TrialRecord]`; `sweep` resolves the settings and the space (settings.py), picks
the backend, and `report.write` turns the trials into trials.csv, best.json, charts and an HTML page.
"""

from __future__ import annotations

import optuna

from lorabench.core.schemas import TrialRecord
from lorabench.core.storage import writing
from lorabench.workflows.sweep import optuna_backend, ray_backend, report, wandb_backend
from lorabench.workflows.sweep.objective import METRIC, Objective
from lorabench.workflows.sweep.settings import SweepSettings, check_inputs, make_objective
from lorabench.workflows.sweep.space import SearchSpace, load_space

BACKENDS = {"optuna": optuna_backend.run, "wandb": wandb_backend.run, "ray": ray_backend.run}


def sweep(settings: SweepSettings) -> dict:
    """Run (or resume) the sweep and write its report; returns the best trial and where everything is. --out is
    locked throughout: workers sharing a study (--storage) each have their own."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # lorabench reports each trial in its own lines
    with writing(settings.out):
        objective = make_objective(settings)
        check_inputs(objective)
        records = BACKENDS[settings.backend](settings, objective)
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
