"""The embedded backend: an Optuna study (TPE sampler, median pruner) in a database, by default SQLite in OUT.

Running the same command again resumes: finished trials stay in the database and are not re-run; a trial left
RUNNING by a killed process of this machine is marked FAIL and its parameters are queued again, so the sweep
ends with exactly `--trials` finished (complete or pruned) trials. The storage is Optuna's standard one, so
`optuna-dashboard sqlite:///OUT/study.db` shows it live, and several machines can share one `--storage` URL.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError  # optuna's storage layer

from lorabench.core.console import say
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import TrialRecord
from lorabench.workflows.sweep.objective import Objective

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Two finished trials give a median to compare with; a trial is then stopped after any epoch but its last
# when its validation F1 is below the median of the earlier trials' F1 at that epoch.
PRUNER_STARTUP_TRIALS = 2


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


def open_study(settings, objective: Objective) -> optuna.Study:
    """Create or load the study and check that it is this same sweep (model, data, epochs, space)."""
    if settings.storage is None:
        settings.out.mkdir(parents=True, exist_ok=True)  # for OUT/study.db
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
        if settings.prune
        else optuna.pruners.NopPruner()
    )
    url = storage_url(settings.out, settings.storage)
    try:
        study = optuna.create_study(
            study_name=settings.out.resolve().name,
            direction="maximize",
            pruner=pruner,
            storage=url,
            load_if_exists=True,
        )
    except (SQLAlchemyError, ImportError) as err:
        raise LorabenchError(f"cannot open the study storage {url}: {first_line(err)}") from err
    identity = {"base_config": objective.base, "space": objective.space.to_wandb()}
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", identity)
    elif changed := _changed_settings(stored, identity):
        raise LorabenchError(
            f"study '{study.study_name}' already holds a sweep with other settings "
            f"({', '.join(changed)}); choose another --out (or --storage)"
        )
    # Seeded from the trial count, so a resumed sweep draws new points instead of replaying its first ones.
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials))
    return study


def _flat(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _changed_settings(stored: dict, current: dict) -> list[str]:
    """Config keys (and 'space') that differ; a key only one side has (a field an upgrade added) is no change."""
    old, new = _flat(stored["base_config"]), _flat(current["base_config"])
    changed = [key for key in old.keys() & new.keys() if old[key] != new[key]]
    return sorted(changed) + (["space"] if stored["space"] != current["space"] else [])


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_abandoned(trial: optuna.trial.FrozenTrial) -> bool:
    """True for a RUNNING trial whose process (on this machine) is gone; trials of live or remote workers stay."""
    host, _, pid = trial.user_attrs.get("worker", ":").rpartition(":")
    if not pid:
        return True  # killed between creating the trial and starting it
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def requeue_abandoned(study: optuna.Study) -> None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_abandoned(trial):
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            say(f"trial {trial.number} was interrupted: marked failed, its parameters queued again")


def make_optuna_objective(objective: Objective, prune: bool):
    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())
        params = objective.space.suggest(trial)
        epochs = objective.config(params).train.epochs
        say(f"trial {trial.number}: {params}")

        def report(epoch: int, row: dict) -> None:
            trial.report(row["val_f1"], epoch)
            # Stopping after the last epoch would only throw a finished result away.
            if prune and epoch < epochs and trial.should_prune():
                raise optuna.TrialPruned(f"val F1 {row['val_f1']:.4f} after epoch {epoch} is below the median")

        return objective.run(params, trial.number, report)

    return run_trial


def run(settings, objective: Objective) -> list[TrialRecord]:
    study = open_study(settings, objective)
    requeue_abandoned(study)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished < settings.trials:
        say(f"sweep: {finished} of {settings.trials} trials finished, running {settings.trials - finished} more")
        # MaxTrialsCallback stops this worker when others sharing the storage have finished the rest.
        study.optimize(
            make_optuna_objective(objective, settings.prune),
            n_trials=settings.trials - finished,
            callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=FINISHED), _say_result],
        )
    return records(study)


def _say_result(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    say(f"trial {trial.number}: {trial.state.name.lower()}, val F1 {value}")


def records(study: optuna.Study) -> list[TrialRecord]:
    return [
        TrialRecord(
            number=t.number,
            state=t.state.name,
            value=t.value,
            params=dict(t.params),
            seconds=round(t.duration.total_seconds(), 2) if t.duration else None,
            started=t.datetime_start.timestamp() if t.datetime_start else None,
            finished=t.datetime_complete.timestamp() if t.datetime_complete else None,
            extra={"retry_of": t.user_attrs.get("retry_of")},
        )
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]
