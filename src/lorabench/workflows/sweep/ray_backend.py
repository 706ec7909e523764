"""The Ray backend: Ray Tune runs trials in parallel, Optuna's TPE picks the parameters, ASHA stops bad trials.

`--address` connects to a running Ray cluster (every node needs lorabench installed, the data and model at the
same paths, and OUT on storage they all reach); without it a local instance starts with this machine's CPUs.
Each trial asks for `--cpus-per-trial` / `--gpus-per-trial`, so Ray runs as many at once as resources allow.
Unlike the optuna backend a Ray sweep does not resume: a second run into the same OUT is refused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time

import optuna
import torch

from lorabench.core.console import say, set_progress
from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import TrialRecord
from lorabench.workflows.sweep.objective import Objective

RAY_DIR = "ray"


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

    objective.run({name: config[name] for name in objective.space.sampled()}, config["trial_number"], report)


def _define_by_run(space, trial) -> dict:
    """Optuna draws the space's parameters; the trial number comes along to name OUT/trials/<n>."""
    space.suggest(trial)
    return {"trial_number": trial.number}


def _start_ray(settings):
    import ray

    if settings.address:
        return ray.init(address=settings.address, configure_logging=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)


def _parallel_trials(settings, resources: dict) -> int:
    """How many trials the cluster's CPUs (and GPUs, when trials ask for them) hold at once."""
    fits = [resources.get("CPU", 1) / settings.cpus_per_trial]
    if settings.gpus_per_trial:
        fits.append(resources.get("GPU", 0) / settings.gpus_per_trial)
    return max(1, int(min(fits)))


def _trial_clock(tune):
    """A Tune callback noting, in the driver, when Ray started and ended each trial: its worker's start-up (the
    training stack's imports) counts, as it does for the user waiting."""

    class TrialClock(tune.Callback):
        def __init__(self):
            self.windows: dict[int, list[float | None]] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.windows[trial.config["trial_number"]] = [time.time(), None]

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.windows.setdefault(trial.config["trial_number"], [None, None])[1] = time.time()

        on_trial_error = on_trial_complete

    return TrialClock()


def run(settings, objective: Objective) -> list[TrialRecord]:
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:
        raise LorabenchError("--backend ray needs Ray Tune: pip install 'lorabench[ray]'") from err
    out = settings.out.resolve()
    if (out / RAY_DIR).exists():
        raise LorabenchError(f"{out} already holds a Ray sweep (Ray sweeps do not resume); choose another --out")

    # ASHA may stop a trial after any epoch but its last (stopping then would only discard a finished result).
    metric = {"metric": "best_val_f1", "mode": "max"}
    scheduler = (
        ASHAScheduler(max_t=objective.epochs - 1, grace_period=1, stop_last_trials=False, **metric)
        if settings.prune and objective.epochs > 1
        else None
    )
    threads = max(1, int(settings.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, objective=objective, threads=threads, cwd=os.getcwd()),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
    )
    search = OptunaSearch(
        functools.partial(_define_by_run, objective.space),
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        **metric,
    )
    clock = _trial_clock(tune)
    _start_ray(settings)
    try:
        # Tune keeps one trial pending at a time for a custom searcher unless a limiter says how many may run:
        # without it the second trial waits until the first has started (its worker's imports), not for a CPU.
        search = ConcurrencyLimiter(search, max_concurrent=_parallel_trials(settings, ray.cluster_resources()))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(num_samples=settings.trials, scheduler=scheduler, search_alg=search),
            run_config=tune.RunConfig(name=RAY_DIR, storage_path=str(out), verbose=0, callbacks=[clock]),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Tune's tables are progress; stdout is for the result
            results = tuner.fit()
    finally:
        ray.shutdown()
    return [_record(result, objective, clock.windows) for result in results]


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
