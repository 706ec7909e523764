"""The Ray backend: Ray Tune runs trials in parallel, Optuna's TPE picks the parameters, ASHA stops bad trials.

`--address` connects to a running Ray cluster (every node needs lorabench installed, the data and model at the
same paths, and OUT on storage they all reach); without it a local instance starts with this machine's CPUs.
Each trial asks for `--cpus-per-trial` / `--gpus-per-trial`, so Ray runs as many at once as resources allow.

Running the same command again resumes an interrupted sweep with `Tuner.restore`: finished trials are kept, and
the trials that were running (or failed) run again under their own number and parameters; their run directories
continue from their last epoch's checkpoint with lorabench's exact resume. The sweep ends with `--trials`
finished trials.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import warnings
from pathlib import Path

import optuna
import torch

from lorabench.core.console import say, set_progress
from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import TrialRecord
from lorabench.core.storage import RunDir, read_json, write_json
from lorabench.workflows.cluster import ray_session
from lorabench.workflows.sweep.objective import Objective
from lorabench.workflows.sweep.optuna_backend import changed_settings

# In OUT: Tune's experiment directory, and lorabench's files beside it (Tune replaces what it finds in its own
# directory with its staged copy when it syncs).
RAY_DIR = "ray"
SWEEP_FILE = "ray_sweep.json"  # the settings a resume must repeat
TRIAL_TIMES_FILE = "ray_trial_times.json"  # when Ray started and ended each trial, across resumes


def _trainable(config: dict, objective: Objective, threads: int, cwd: str) -> None:
    """One trial inside a Ray worker; reports after every epoch so ASHA can stop it early."""
    from ray import tune  # optional dependency (lorabench[ray])

    os.chdir(cwd)  # Ray starts trials in their own directory; relative --data/--model paths mean the sweep's
    set_progress(False)  # parallel trials' progress bars would interleave
    torch.set_num_threads(threads)
    best = {"f1": -1.0}

    def report(epoch: int, row: dict) -> None:
        best["f1"] = max(best["f1"], row["val_f1"])
        tune.report({"val_f1": row["val_f1"], "best_val_f1": best["f1"], "epoch": epoch})

    number = config["trial_number"]
    # A trial that a resumed sweep runs again finds the run directory it left: the epochs recorded there are
    # reported first (the trial's best F1 and ASHA count them), and the run continues from its last checkpoint.
    for row in RunDir(objective.trials_dir / str(number)).metrics():
        report(row["epoch"], row)
    objective.run({name: config[name] for name in objective.space.sampled()}, number, report, resume=True)


def _define_by_run(space, trial) -> dict:
    """Optuna draws the space's parameters; the trial number comes along to name OUT/trials/<n>."""
    space.suggest(trial)
    return {"trial_number": trial.number}


def _parallel_trials(settings, resources: dict) -> int:
    """How many trials the cluster's CPUs (and GPUs, when trials ask for them) hold at once."""
    fits = [resources.get("CPU", 1) / settings.cpus_per_trial]
    if settings.gpus_per_trial:
        fits.append(resources.get("GPU", 0) / settings.gpus_per_trial)
    return max(1, int(min(fits)))


def trial_times(path: Path) -> dict[int, list[float | None]]:
    """Trial number -> [start, end] (Unix time; None where not seen) of every session of the sweep."""
    return {int(number): window for number, window in read_json(path).items()} if path.is_file() else {}


def _trial_clock(tune, path: Path):
    """A Tune callback noting, in the driver, when Ray started and ended each trial: its worker's start-up (the
    training stack's imports) counts, as it does for the user waiting. The times are kept in a file, as a
    resumed sweep's callback is Tune's copy of the first session's and its trials finished then count too."""

    class TrialClock(tune.Callback):
        def _note(self, trial, end: bool) -> None:
            windows = trial_times(path)
            number = trial.config["trial_number"]
            if end:
                windows.setdefault(number, [None, None])[1] = time.time()
            else:
                windows[number] = [time.time(), None]
            write_json(path, windows)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._note(trial, end=False)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._note(trial, end=True)

        on_trial_error = on_trial_complete

    return TrialClock()


def _identity(settings, objective: Objective) -> dict:
    return {**objective.identity(), "trials": settings.trials, "prune": settings.prune}


def _check_resumable(tune, out: Path, identity: dict) -> None:
    """Refuse to resume what is not this sweep, or what Tune cannot restore, in one line."""
    if not tune.Tuner.can_restore(str(out / RAY_DIR)) or not (out / SWEEP_FILE).is_file():
        raise LorabenchError(
            f"{out} holds a Ray sweep that cannot be resumed (stopped before Ray recorded it, or made by a lorabench "
            f"without {SWEEP_FILE}); choose another --out"
        )
    stored = read_json(out / SWEEP_FILE)
    changed = changed_settings(stored, identity) + [key for key in ("trials", "prune") if stored[key] != identity[key]]
    if changed:
        raise LorabenchError(
            f"{out} holds a Ray sweep with other settings ({', '.join(changed)}); run it again with "
            "its own settings to resume it, or choose another --out"
        )


def _new_tuner(tune, settings, objective: Objective, trainable):
    """A fresh Tuner: OptunaSearch's TPE draws the points, ASHA stops bad trials, the clock notes their times."""
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # ASHA may stop a trial after any epoch but its last (stopping then would only discard a finished result);
    # its clock is the epoch each report names, which a trial run again after a resume reports anew.
    metric = {"metric": "best_val_f1", "mode": "max"}
    scheduler = (
        ASHAScheduler(time_attr="epoch", max_t=objective.epochs - 1, grace_period=1, stop_last_trials=False, **metric)
        if settings.prune and objective.epochs > 1
        else None
    )
    search = OptunaSearch(
        functools.partial(_define_by_run, objective.space),
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        **metric,
    )
    # Tune keeps one trial pending at a time for a custom searcher unless a limiter says how many may run:
    # without it the second trial waits until the first has started (its worker's imports), not for a CPU.
    search = ConcurrencyLimiter(search, max_concurrent=_parallel_trials(settings, ray.cluster_resources()))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=settings.trials, scheduler=scheduler, search_alg=search),
        run_config=tune.RunConfig(
            name=RAY_DIR,
            storage_path=str(settings.out.resolve()),
            verbose=0,
            callbacks=[_trial_clock(tune, settings.out.resolve() / TRIAL_TIMES_FILE)],
        ),
    )


def run(settings, objective: Objective) -> list[TrialRecord]:
    try:
        from ray import tune
    except ImportError as err:
        raise LorabenchError("--backend ray needs Ray Tune: pip install 'lorabench[ray]'") from err
    out = settings.out.resolve()
    identity = _identity(settings, objective)
    resuming = (out / RAY_DIR).exists()
    if resuming:
        _check_resumable(tune, out, identity)
    threads = max(1, int(settings.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, objective=objective, threads=threads, cwd=os.getcwd()),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    with ray_session(settings.address):
        if resuming:  # finished trials are kept; running and failed ones run again
            tuner = tune.Tuner.restore(str(out / RAY_DIR), trainable, resume_unfinished=True, restart_errored=True)
        else:
            tuner = _new_tuner(tune, settings, objective, trainable)
            write_json(out / SWEEP_FILE, identity)
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():  # stdout is for the result
            # A trial run again after a resume reports its recorded epochs again, which OptunaSearch has seen.
            warnings.filterwarnings("ignore", "The reported value is ignored because this `step", UserWarning)
            results = tuner.fit()
    # Tune stops on Ctrl-C (SIGINT) or SIGUSR1, saves its state and returns; the trials it stopped then count as
    # terminated in its results, so what finished is what the clock saw end.
    windows = trial_times(out / TRIAL_TIMES_FILE)
    finished = sum(window[1] is not None for window in windows.values())
    if finished < settings.trials:
        say(f"sweep interrupted with {finished} of {settings.trials} trials finished; run it again to resume")
        raise KeyboardInterrupt
    return [_record(result, objective, windows) for result in results]


def _record(result, objective: Objective, windows: dict[int, list[float | None]]) -> TrialRecord:
    metrics = result.metrics or {}
    params = {name: result.config[name] for name in objective.space.sampled()}
    epochs_run = metrics.get("epoch", 0)
    state = "FAIL" if result.error else "COMPLETE" if epochs_run == objective.config(params).train.epochs else "PRUNED"
    started, finished = windows.get(result.config["trial_number"], (None, None))
    seconds = finished - started if started is not None and finished is not None else None
    value = metrics.get("best_val_f1")
    say(f"trial {result.config['trial_number']}: {state.lower()}, val F1 {value if value is not None else '-'}")
    return TrialRecord(
        number=result.config["trial_number"],
        state=state,
        value=value,
        params=params,
        seconds=round(seconds, 2) if seconds is not None else None,
        started=started,
        finished=finished,
        extra={"epochs_run": epochs_run},
    )
