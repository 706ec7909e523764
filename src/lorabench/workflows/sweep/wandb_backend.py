"""The W&B backend: a W&B Bayesian sweep (method bayes, metric eval/f1) run by `wandb agent`s.

`lorabench sweep --backend wandb` writes OUT/wandb_sweep.yaml first, so the configuration exists even where W&B
cannot be reached (`wandb sweep OUT/wandb_sweep.yaml` later); with an API key it registers the sweep and runs
`--trials` trials in this process. More machines join with `wandb agent`, which calls `lorabench sweep-agent`.
wandb is imported only here and only when used: the other backends never need it.
"""

from __future__ import annotations

import netrc
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml

from lorabench.core.console import say
from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import TrialRecord
from lorabench.core.storage import read_record, write_atomic, write_record
from lorabench.workflows.sweep.objective import Objective
from lorabench.workflows.sweep.settings import make_objective

SWEEP_FILE = "wandb_sweep.yaml"
WANDB_METRIC = "eval/f1"
TRIAL_FILE = "trial.json"


def _import_wandb():
    try:
        import wandb
    except ImportError as err:
        raise LorabenchError("--backend wandb needs the wandb package: pip install 'lorabench[wandb]'") from err
    return wandb


def api_key_configured() -> bool:
    """Where wandb looks for a key: WANDB_API_KEY, else the netrc entry `wandb login` writes for the API host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def agent_arguments(settings) -> list[str]:
    """`lorabench sweep-agent` flags that rebuild this sweep's objective; local paths made absolute."""

    def local(value):
        return str(Path(value).resolve()) if value is not None and Path(value).exists() else value

    flags = {
        "--model": local(settings.model),
        "--data": local(settings.data),
        "--out": str(settings.out.resolve()),
        "--space": local(settings.space),
        "--epochs": settings.epochs,
        "--max-train-rows": settings.max_train_rows,
        **{"--" + key.replace("_", "-"): value for key, value in settings.columns.items()},
    }
    return [part for flag, value in flags.items() if value is not None for part in (flag, str(value))]


def sweep_configuration(settings, objective: Objective) -> dict:
    configuration = {
        "name": settings.out.resolve().name,
        "program": "lorabench",  # required by W&B; the command below is what an agent runs
        "method": "bayes",
        "metric": {"name": WANDB_METRIC, "goal": "maximize"},
        "parameters": objective.space.to_wandb(),
        "run_cap": settings.trials,
        "command": ["${env}", "lorabench", "sweep-agent", *agent_arguments(settings)],
    }
    if settings.prune:
        configuration["early_terminate"] = {"type": "hyperband", "min_iter": 1}
    return configuration


def run(settings, objective: Objective) -> list[TrialRecord]:
    path = settings.out / SWEEP_FILE
    configuration = sweep_configuration(settings, objective)
    header = "# W&B sweep written by `lorabench sweep --backend wandb`: `wandb sweep` this file, then `wandb agent`.\n"
    write_atomic(path, header + yaml.safe_dump(configuration, sort_keys=False))
    if not api_key_configured():
        raise LorabenchError(
            f"W&B needs an API key (set WANDB_API_KEY or run `wandb login`); the sweep "
            f"configuration is written to {path}; --backend optuna needs no account"
        )
    wandb = _import_wandb()
    project = os.environ.get("WANDB_PROJECT", "lorabench")
    sweep_id = wandb.sweep(configuration, project=project)
    say(f"W&B sweep {sweep_id}: more machines join with `wandb agent --project {project} {sweep_id}`")
    wandb.agent(sweep_id, function=lambda: run_agent_trial(objective), project=project, count=settings.trials)
    return local_records(objective.trials_dir)


def run_agent_trial(objective: Objective) -> float:
    """One sweep run: read the parameters W&B chose from wandb.config, train, log eval/f1 per epoch."""
    wandb = _import_wandb()
    run = wandb.init()  # under `wandb agent` this run belongs to the sweep and its config holds the parameters
    missing = [name for name in objective.space.sampled() if name not in run.config]
    if missing:
        run.finish(exit_code=1)
        raise LorabenchError(
            f"wandb.config lacks {', '.join(missing)}: `lorabench sweep-agent` is started by "
            "`wandb agent` for a sweep of the same space"
        )
    params = {name: run.config[name] for name in objective.space.sampled()}
    started = time.time()

    def log(epoch: int, row: dict) -> None:
        run.log({WANDB_METRIC: row["val_f1"], "train/loss": row["train_loss"], "epoch": epoch})

    value = objective.run(params, run.id, log)
    run.summary[WANDB_METRIC] = value  # the best epoch's F1 is the trial's result, not the last epoch's
    finished = time.time()
    record = TrialRecord(
        number=-1,
        state="COMPLETE",
        value=value,
        params=params,
        seconds=round(finished - started, 2),
        started=started,
        finished=finished,
        extra={"wandb_run": run.id},
    )
    write_record(objective.trials_dir / run.id / TRIAL_FILE, record)
    run.finish()
    return value


def agent(settings) -> float:
    """`lorabench sweep-agent`: one trial of the sweep these settings describe, as `wandb agent` starts it."""
    return run_agent_trial(make_objective(settings))


def local_records(trials_dir: Path) -> list[TrialRecord]:
    """The trials run on this machine, numbered in the order they started (W&B's page shows every agent's)."""
    found = sorted(
        (read_record(path, TrialRecord, "trial record") for path in trials_dir.glob(f"*/{TRIAL_FILE}")),
        key=lambda record: record.started,
    )
    for number, record in enumerate(found):
        record.number = number
    return found
