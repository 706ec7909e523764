"""Experiment tracking beyond the always-written run record: Weights & Biases, MLflow and TensorBoard, any
number of them at once (`--tracking mlflow,tensorboard`).

Each tracker gets the resolved config as parameters, one row of metrics per epoch at step = epoch, and the final
summary's scalars. None needs an account or network to start: W&B logs offline without an API key, MLflow writes
a file store in the run directory unless MLFLOW_TRACKING_URI names another, TensorBoard writes event files there.

The libraries are used directly rather than through accelerate's trackers: accelerate's MLflow tracker drives
MLflow's process-wide active run and sets MLFLOW_* variables, so two sweep trials in one process (the Optuna
backend's --jobs) would log into each other's run; MLflow's client and a SummaryWriter each hold their own run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lorabench.core.errors import LorabenchError
from lorabench.core.storage import TRACKER_DIRS


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested record, flattened to dotted keys (`val.f1`); text, lists and None left out."""
    found: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            found.update(scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


def params(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The config flattened to dotted keys, with what is not a plain value (None, lists) as its text."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return flat


def _needs(package: str, kind: str) -> LorabenchError:
    return LorabenchError(f"--tracking {kind} needs the {package} package: pip install 'lorabench[tracking]'")


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict, name: str):
        try:
            import wandb  # optional: lorabench[wandb]
        except ImportError as err:
            raise LorabenchError("--tracking wandb needs the wandb package: pip install 'lorabench[wandb]'") from err
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file()
        mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
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


class MlflowTracker:
    """One MLflow run per training run, in the experiment MLFLOW_EXPERIMENT_NAME (default: lorabench)."""

    def __init__(self, run_dir: Path, config: dict, name: str):
        try:
            from mlflow.entities import Param  # optional: lorabench[tracking]
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise _needs("mlflow-skinny", "mlflow") from err
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps its file store only when asked: it is the store that needs no server or database
            # migration (a SQLite store takes seconds to create per run), and `mlflow ui` reads it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / TRACKER_DIRS["mlflow"]).resolve().as_uri()
        self._client = MlflowClient(uri)
        experiment = self._experiment_id(os.environ.get("MLFLOW_EXPERIMENT_NAME", "lorabench"))
        self._run_id = self._client.create_run(experiment, run_name=name).info.run_id
        self._client.log_batch(self._run_id, params=[Param(k, str(v)) for k, v in params(config).items()])

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException  # optional: lorabench[tracking]

        existing = self._client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return self._client.create_experiment(name)
        except MlflowException:  # another worker of a sweep created it first
            return self._client.get_experiment_by_name(name).experiment_id

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # optional: lorabench[tracking]

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log(self, metrics: dict, step: int) -> None:
        self._log(scalars(metrics), step)

    def finish(self, summary: dict) -> None:
        self._log(scalars(summary, "summary."), summary.get("best_epoch", 0))
        self._client.set_terminated(self._run_id)


class TensorBoardTracker:
    """Event files under RUN/tensorboard: epoch scalars, and the config with the summary as one hparams row."""

    def __init__(self, run_dir: Path, config: dict, name: str):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package, optional
        except ImportError as err:
            raise _needs("tensorboard", "tensorboard") from err
        self._writer = SummaryWriter(log_dir=str(run_dir / TRACKER_DIRS["tensorboard"]))
        self._params = params(config)

    def log(self, metrics: dict, step: int) -> None:
        for key, value in scalars(metrics).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()  # a pruned or failed run never reaches finish(); its epochs are on disk already

    def finish(self, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams  # with SummaryWriter above

        final = scalars(summary, "summary.")
        for part in hparams(self._params, final):
            self._writer.file_writer.add_summary(part)
        for key, value in final.items():
            self._writer.add_scalar(key, value, summary.get("best_epoch", 0))
        self._writer.close()


class Trackers:
    """The trackers a run asked for, as one: each call goes to every one of them."""

    def __init__(self, trackers: list):
        self._trackers = trackers

    def log(self, metrics: dict, step: int) -> None:
        for tracker in self._trackers:
            tracker.log(metrics, step)

    def finish(self, summary: dict) -> None:
        for tracker in self._trackers:
            tracker.finish(summary)


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}


def make_tracker(kinds: list[str], run_dir: Path, config: dict, name: str) -> Trackers:
    """The trackers named in `train.tracking`; `local` and `none` add none (the run record is always written)."""
    return Trackers([TRACKERS[kind](run_dir, config, name) for kind in kinds if kind in TRACKERS])
