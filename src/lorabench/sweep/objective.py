"""One trial: `lorabench train` with the sampled parameters as overrides, scored by its best validation F1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorabench.config import RunConfig, merge, validate
from lorabench.sweep.space import SearchSpace

METRIC = "val_f1"  # what every backend maximises: the best epoch's validation F1


@dataclass(frozen=True)
class Objective:
    """Everything a trial needs, small and picklable so Ray can ship it to its workers."""

    base: dict[str, Any]  # the resolved run config every trial starts from (preset + --data/--epochs/...)
    space: SearchSpace
    trials_dir: Path

    def config(self, params: dict[str, Any]) -> RunConfig:
        return validate(merge(self.base, self.space.overrides(params)))

    def run(
        self, params: dict[str, Any], name: str | int, on_epoch_end: Callable[[int, dict], None] | None = None
    ) -> float:
        """Train into trials_dir/<name>; `on_epoch_end(epoch, row)` reports (and may prune) after each epoch."""
        from lorabench.api import train  # deferred: importing the sweep API must not load torch

        summary = train(self.config(params), self.trials_dir / str(name), on_epoch_end=on_epoch_end)
        return summary["val"]["f1"]

    @property
    def epochs(self) -> int:
        return self.base["train"]["epochs"]


@dataclass
class TrialRecord:
    """One trial as every backend reports it, for trials.csv, best.json and the charts."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL or RUNNING (Optuna's names)
    value: float | None
    params: dict[str, Any]
    seconds: float | None = None
    started: float | None = None  # Unix time
    finished: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific columns (e.g. the W&B run id)
