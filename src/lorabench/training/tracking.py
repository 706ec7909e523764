"""Experiment tracking beyond the always-written run record: Weights & Biases when asked for.

With no W&B API key configured the run is logged in offline mode (sync it later with `wandb sync`),
so tracking never needs an account or network to start.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorabench.core.errors import LorabenchError


class NoTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict, name: str):
        try:
            import wandb
        except ImportError as err:
            raise LorabenchError("--tracking wandb needs the wandb package: pip install 'lorabench[wandb]'") from err
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file()
        mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
        self._wandb = wandb
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "lorabench"),
            name=name,
            config=config,
            dir=str(run_dir),
            mode=mode,
        )

    def log(self, metrics: dict, step: int) -> None:
        self._run.log(metrics, step=step)

    def finish(self, summary: dict) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self._run.summary[key] = value
        self._run.finish()


def make_tracker(kind: str, run_dir: Path, config: dict, name: str):
    return WandbTracker(run_dir, config, name) if kind == "wandb" else NoTracker()
