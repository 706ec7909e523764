"""One trial: `lorabench train` with the sampled parameters as overrides, scored by its best validation F1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorabench.core.config import RunConfig, merge, validate
from lorabench.training.run import train_trial
from lorabench.workflows.sweep.space import SearchSpace

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
        summary = train_trial(self.config(params), self.trials_dir / str(name), on_epoch_end=on_epoch_end)
        return summary.val.f1

    @property
    def epochs(self) -> int:
        return self.base["train"]["epochs"]
