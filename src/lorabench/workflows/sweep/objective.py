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
        self,
        params: dict[str, Any],
        name: str | int,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        resume: bool = False,
    ) -> float:
        """Train into trials_dir/<name>; `on_epoch_end(epoch, row)` reports (and may prune) after each epoch;
        `resume` continues the run an interrupted sweep left there, from its last checkpoint."""
        config = self.config(params)
        summary = train_trial(config, self.trials_dir / str(name), on_epoch_end=on_epoch_end, resume=resume)
        return summary.val.f1

    def identity(self) -> dict[str, Any]:
        """What makes a resumed sweep the same sweep: the base run config and the space."""
        return {"base_config": self.base, "space": self.space.to_wandb()}

    @property
    def epochs(self) -> int:
        return self.base["train"]["epochs"]
