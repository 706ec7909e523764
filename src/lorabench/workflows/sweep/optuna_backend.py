"""The embedded backend: an Optuna study (TPE sampler, median pruner) in a database, by default SQLite in OUT.

Running the same command again resumes: finished trials stay in the database and are not re-run. A running trial
sends Optuna's heartbeat every `--heartbeat-seconds`; one whose worker died on any machine stops beating, and the
next worker to check (at its start or a trial's) marks it FAIL and queues its parameters again, so the sweep ends
with exactly `--trials` finished (complete or pruned) trials. A worker started again on the machine of a killed
one does not wait out the grace period: a RUNNING trial of a process of this machine that is gone is retried at
once. The storage is Optuna's standard one, so `optuna-dashboard sqlite:///OUT/study.db` shows it live, and several
machines can share one `--storage` URL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
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
# A trial's heartbeat may be this many intervals late (a slow database, a long pause) before it counts as dead.
GRACE_INTERVALS = 3
# Retries of a trial whose worker died: a point that kills its worker each time (out of memory) is given up.
MAX_RETRIES = 2


@contextlib.contextmanager
def _experimental_apis():
    """Optuna marks its heartbeat, stale-trial check and retry callback experimental (since v2.8); the
    warnings speak to lorabench's authors, not to whoever runs a sweep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


with _experimental_apis():
    RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


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
        with _experimental_apis():
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=settings.heartbeat_seconds,
                grace_period=GRACE_INTERVALS * settings.heartbeat_seconds,
                heartbeat_stale_trial_callback=RETRY,
            )
        study = optuna.create_study(
            study_name=settings.out.resolve().name,
            direction="maximize",
            pruner=pruner,
            storage=storage,
            load_if_exists=True,
        )
    except (SQLAlchemyError, ImportError, ValueError) as err:
        raise LorabenchError(f"cannot open the study storage {url}: {first_line(err)}") from err
    identity = objective.identity()
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", identity)
    elif changed := changed_settings(stored, identity):
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


def changed_settings(stored: dict, current: dict) -> list[str]:
    """Config keys (and 'space') that differ; a key only one side has (a field an upgrade added) is no change."""
    old, new = _flat(stored["base_config"]), _flat(current["base_config"])
    changed = [key for key in old.keys() & new.keys() if old[key] != new[key]]
    return sorted(changed) + (["space"] if stored["space"] != current["space"] else [])


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_abandoned(trial: optuna.trial.FrozenTrial) -> bool:
    """True for a RUNNING trial whose process on this machine is gone; the heartbeat finds those of others."""
    host, _, pid = trial.user_attrs.get("worker", ":").rpartition(":")
    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def retry_dead_workers_trials(study: optuna.Study) -> None:
    """Fail and queue again the running trials whose worker is dead: silent past the grace period, or a process
    of this machine that is gone (no need to wait for the grace period)."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with _experimental_apis():
        optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_abandoned(trial):
            RETRY(study, study.tell(trial.number, state=TrialState.FAIL))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number in running:
            say(
                f"trial {trial.number}: its worker stopped; marked failed, its point queued again (at most {MAX_RETRIES} times)"
            )


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
    retry_dead_workers_trials(study)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished < settings.trials:
        say(f"sweep: {finished} of {settings.trials} trials finished, running {settings.trials - finished} more")
        # MaxTrialsCallback stops this worker when others sharing the storage have finished the rest.
        try:
            study.optimize(
                make_optuna_objective(objective, settings.prune),
                n_trials=settings.trials - finished,
                callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=FINISHED), _say_result],
            )
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM
            retry_interrupted_trial(study)
            raise
    return records(study)


def retry_interrupted_trial(study: optuna.Study) -> None:
    """Queue again the point of the trial an interrupt stopped in this process (optuna marks it failed), so the
    same command run again tries it, as it does a dead worker's."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == _worker()]
    if mine and mine[-1].state == TrialState.FAIL:
        RETRY(study, mine[-1])
        say(f"trial {mine[-1].number}: interrupted; its point is queued again for the same command run again")


def _say_result(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    say(f"trial {trial.number}: {trial.state.name.lower()}, val F1 {value}")


def retried_trial(trial: optuna.trial.FrozenTrial) -> int | None:
    """The first trial of the retries this one continues; RETRY writes it (read here without Optuna's
    experimental-API warning of RetryHeartbeatStaleTrialCallback.retried_trial_number)."""
    return trial.system_attrs.get("failed_trial")


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
            extra={"retry_of": retried_trial(t)},
        )
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]
