"""Compare several models on one data set: the identical split for all, one row per model, one report.

Each model trains in its own fresh process, and its inference cost is then measured in another. On CPU a run's
`peak_memory_mb` is its process's peak resident memory, which in a shared process would carry the previous
models' peaks (and inference's would carry training's); and a model that takes its process down (out of memory,
a native abort) is recorded like any other failure while the next model still runs. The processes fork from a
forkserver that imported the training stack once (seconds per process on 2 cores), not from this process (whose
threads and memory a fork would copy).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from lorabench.core import console
from lorabench.core.config import (
    DataConfig,
    RunConfig,
)
from lorabench.core.console import say
from lorabench.core.errors import LorabenchError, stage
from lorabench.core.runtime import machine_info, package_versions
from lorabench.core.schemas import CompareManifest, ModelStatus, SeedRun
from lorabench.core.settings import CompareBackend
from lorabench.core.storage import (
    MANIFEST_FILE,
    contents,
    read_record,
    restored_on_failure,
    safe_dir_name,
    write_record,
    writing,
)
from lorabench.data.sources import TextSplits, load_splits
from lorabench.data.statistics import split_checks
from lorabench.models.registry import classifier_type
from lorabench.training.averaging import ensemble_of_runs
from lorabench.training.distributed import World, on_main, world
from lorabench.training.run import train
from lorabench.workflows.cost import measure_cost
from lorabench.workflows.members import CompareConfig, load_compare_config, plan_runs, reporting
from lorabench.workflows.report import render

RUNS_DIR = "runs"
ENSEMBLE = "ensemble"  # the row and run directory (OUT/runs/ensemble) of compare --ensemble
VERSIONED_PACKAGES = ("lorabench", "torch", "transformers", "peft", "scikit-learn", "numpy", "pandas")


def train_reporting(config: RunConfig, out_dir: str | Path) -> tuple[str, str]:
    """Train one model (continuing its run's checkpoint, if an interrupted comparison left one); ('ok', '') or
    ('failed', reason) instead of an exception."""
    return reporting(train, config, out_dir, True)


# What every fresh process needs, imported once by the forkserver instead of by each (about 9 s on 2 busy cores).
PRELOADED = ["lorabench.training.run", "lorabench.workflows.cost", "peft"]


def _report_in_child(function: Callable[..., object], args: tuple, progress: bool, cwd: str, env: dict, conn) -> None:
    """Runs in the fresh process: take the caller's directory and environment as a spawned process would, call
    the function, then send back ('ok', '') or ('failed', reason)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    console.set_progress(progress)
    try:
        conn.send(reporting(function, *args))
    finally:
        conn.close()


def fresh_process_context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (Linux, macOS), else spawn; never a fork of this process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def run_isolated(what: str, function: Callable[..., object], *args: object) -> tuple[str, str]:
    """Call `function(*args)` in a fresh process; (status, reason), also when the process dies without a word.
    `what` names the work in that reason."""
    context = fresh_process_context()
    receive, send = context.Pipe(duplex=False)
    progress = console.progress_enabled()  # the child starts with fresh module state: hand on --quiet
    child_args = (function, args, progress, os.getcwd(), dict(os.environ), send)
    process = context.Process(target=_report_in_child, args=child_args)
    process.start()
    send.close()
    try:
        try:
            status, reason = receive.recv()
        except EOFError:
            status, reason = "failed", ""
        process.join()
    except BaseException:  # Ctrl-C: stop the child before leaving
        process.terminate()
        process.join()
        raise
    if status == "failed" and not reason:
        code = process.exitcode
        reason = (
            f"the {what} process was killed by signal {-code} (out of memory?)"
            if code and code < 0
            else f"the {what} process ended with exit code {code} and no message"
        )
    return status, reason


def train_isolated(config: RunConfig, out_dir: Path) -> tuple[str, str]:
    """Train in a fresh process, so its peak memory is its own and a crash takes only this model down (continuing
    its run's checkpoint, if an interrupted comparison left one)."""
    return run_isolated("training", train, config, str(out_dir), True)


def with_seed(config: RunConfig, seed: int) -> RunConfig:
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


def _train_seeds(entry: ModelStatus, plan: RunConfig, out_dir: Path, current: World) -> None:
    """Train every seed of one model, stopping at the first that fails, and set the model's status."""
    trainer = train_reporting if current.distributed else train_isolated
    for run in entry.seeds:
        if run.status == "ok":  # trained before the comparison was interrupted
            continue
        if len(entry.seeds) > 1:
            say(f"{entry.name}: seed {run.seed}")
        run.started = time.time()
        run.status, run.error = trainer(with_seed(plan, run.seed), out_dir / run.run_dir)
        run.ended = time.time()
        run.wall_seconds = round(run.ended - run.started, 1)
        if run.status != "ok":
            break
    _settle(entry)


def _settle(entry: ModelStatus) -> None:
    """The model's status from its seeds': ok when every seed trained, else the first failure's reason."""
    failed = next((run for run in entry.seeds if run.status != "ok"), None)
    entry.status, entry.error = "ok", ""
    if failed is not None:
        entry.status = "failed"
        entry.error = f"seed {failed.seed}: {failed.error}" if len(entry.seeds) > 1 else failed.error
    entry.wall_seconds = round(sum(run.wall_seconds or 0 for run in entry.seeds), 1)


def _measure_cost(entry: ModelStatus, out_dir: Path, texts: list[str]) -> None:
    """Inference cost of the model's first run, measured in a fresh process (its peak memory is inference's)."""
    _, entry.cost_error = run_isolated("cost measurement", measure_cost, str(out_dir / entry.run_dir), texts)
    if entry.cost_error:
        say(f"{entry.name}: inference cost not measured: {entry.cost_error}")


def _describe(name: str, config: RunConfig, train_rows: int, seeds: list[int]) -> str:
    cap = config.data.max_train_rows
    capped = cap is not None and cap < train_rows
    rows = f"training rows capped at {cap} of {train_rows}" if capped else f"{train_rows} training rows"
    epochs = config.train.epochs
    in_epochs = classifier_type(config.kind).trains_in_epochs
    passes = f"{epochs} epoch{'s' if epochs > 1 else ''}" if in_epochs else "one pass"
    repeats = f", seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else ""
    return f"{name}: {passes}, {rows}{repeats}"


def compare(
    models: list[str] | None,
    out_dir: str | Path,
    data: str | None = None,
    test: str | None = None,
    epochs: int | None = None,
    max_train_rows: int | None = None,
    config_file: str | Path | None = None,
    seeds: int = 1,
    ensemble: bool = False,
    overrides: dict[str, Any] | None = None,
    methods: list[str] | None = None,
    backend: CompareBackend | None = None,
) -> pd.DataFrame:
    """Train every model into OUT/runs/<model> on the identical split, measure what using it costs, and write the
    results and the report. With `seeds` N > 1 each model trains N times, with train.seed + 0 .. N-1, into
    OUT/runs/<model>/seed-<seed>, and the results give mean and sd over them. With `ensemble`, the trained
    models' (first seeds') probabilities are then averaged with weights fitted on validation into OUT/runs/ensemble,
    an averaging run with its own row (lorabench.training.averaging.ensemble_of_runs). `overrides` are any other
    run settings every model shares, as nested sections (the command's flags: {"data": {"label_column": ...}}).
    `methods` cross every model with those methods (`grid`); a member may also be named `model:method`.
    `backend` ray trains the members as Ray tasks at once (lorabench.workflows.ray_members); local, one by one.

    Returns the results table (one row per model). Bad input fails before anything is written; a model that
    fails to load or train gets a row with its reason and the next model still runs. The same command run again
    on an interrupted comparison's --out continues it: trained models are kept, a model's checkpoint resumes.
    """
    if seeds < 1:
        raise LorabenchError(f"seeds must be at least 1, got {seeds}")
    settings = load_compare_config(config_file) if config_file else CompareConfig()
    models = models or list(settings.models)
    plans = plan_runs(models, settings, data, test, epochs, max_train_rows, overrides, methods)
    out_dir = Path(out_dir)
    # Under torchrun every process runs this function: rank 0 alone checks, writes and measures costs, and each
    # model trains in this process (all ranks together) rather than in a child of its own.
    current = world()
    backend = backend or CompareBackend()
    if backend.backend == "ray" and current.distributed:
        raise LorabenchError("compare --backend ray runs each member as a Ray task; start it as one process")
    if not current.is_main:
        console.set_progress(False)
    # rank 0 holds --out's lock throughout (a second comparison there is refused), checks it, and writes
    with writing(out_dir) if current.is_main else contextlib.nullcontext():
        earlier = on_main(lambda: _earlier_manifest(out_dir), current)
        shared_data = next(iter(plans.values())).data.model_copy(update={"max_train_rows": None})
        splits = load_splits(shared_data)  # here, so bad data fails now and not once per model
        manifest = _start_manifest(plans, shared_data, splits, current.size, seeds, ensemble)
        if earlier is not None:
            _continue(manifest, earlier, out_dir)
        # a failure of the comparison itself (a model's failure is only its row) leaves --out as it was
        with restored_on_failure(out_dir) if current.is_main else contextlib.nullcontext():
            _run_models(manifest, plans, out_dir, splits.validation["text"].tolist(), current, backend)
            if ensemble:
                on_main(functools.partial(_add_ensemble, manifest, out_dir, splits, shared_data), current)
            with stage("writing the results and the report", str(out_dir)):
                return on_main(lambda: render(out_dir), current)


def _run_models(manifest: CompareManifest, plans: dict[str, RunConfig], out_dir: Path, texts: list[str],
                current: World, backend: CompareBackend) -> None:  # fmt: skip
    """Train each model (every seed), then measure what using it costs; the manifest is rewritten after each.
    On Ray every training is submitted at once and the costs are measured once they are done."""

    def write_manifest() -> None:
        write_record(out_dir / MANIFEST_FILE, manifest)

    on_main(write_manifest, current)
    todo = [entry for entry in manifest.models if entry.status != "ok"]  # ok: done before an interruption
    if backend.backend == "ray":
        from lorabench.workflows.ray_members import train_on_ray  # deferred: Ray is an optional dependency

        pending = [(entry, run, with_seed(plans[entry.name], run.seed)) for entry in todo for run in entry.seeds
                   if run.status != "ok"]  # fmt: skip
        train_on_ray(pending, out_dir, backend.cpus_per_member, backend.gpus_per_member, write_manifest)
    for entry in todo:
        if backend.backend == "ray":
            _settle(entry)
        else:
            say(f"[{manifest.models.index(entry) + 1}/{len(manifest.models)}] {entry.plan}")
            _train_seeds(entry, plans[entry.name], out_dir, current)
        if entry.status == "ok":
            on_main(functools.partial(_measure_cost, entry, out_dir, texts), current)
        else:
            say(f"{entry.name} failed: {entry.error}")
        on_main(write_manifest, current)


def _add_ensemble(manifest: CompareManifest, out_dir: Path, splits: TextSplits, data: DataConfig) -> None:
    """The `ensemble` row: the trained models averaged with weights fitted on validation, its cost measured like
    any model's; a failure (fewer than two trained models) is its row's reason, and leaves no run behind."""
    members = {entry.name: out_dir / entry.run_dir for entry in manifest.models if entry.status == "ok"}
    entry = ModelStatus(name=ENSEMBLE, run_dir=f"{RUNS_DIR}/{ENSEMBLE}",
                        plan=f"{ENSEMBLE}: {', '.join(members) or 'no model'} averaged, weights fitted on validation")  # fmt: skip
    say(entry.plan)
    manifest.models.append(entry)
    started = time.perf_counter()
    entry.status, entry.error = reporting(_fit_ensemble, members, out_dir / entry.run_dir, splits, data)
    entry.wall_seconds = round(time.perf_counter() - started, 1)
    if entry.status == "ok":
        _measure_cost(entry, out_dir, splits.validation["text"].tolist())
    else:
        say(f"{ENSEMBLE} failed: {entry.error}")
    write_record(out_dir / MANIFEST_FILE, manifest)


def _fit_ensemble(members: dict[str, Path], run_dir: Path, splits: TextSplits, data: DataConfig) -> None:
    with restored_on_failure(run_dir):
        ensemble_of_runs(members, run_dir, splits, data)


def _earlier_manifest(out_dir: Path) -> CompareManifest | None:
    """The record of the comparison an interrupted run of this command left in --out; None for an empty --out."""
    if not contents(out_dir):
        return None
    if not (out_dir / MANIFEST_FILE).is_file():
        raise LorabenchError(f"output directory {out_dir} is not empty; choose another --out")
    remedy = "choose another --out"
    return read_record(out_dir / MANIFEST_FILE, CompareManifest, "comparison record", remedy)


def _continue(manifest: CompareManifest, earlier: CompareManifest, out_dir: Path) -> None:
    """Take over what the same comparison, interrupted, finished: its models' and seeds' statuses. Another
    comparison (data, models, plans or seeds changed) is refused; the ensemble is fitted again (it is derived)."""

    def layout(record: CompareManifest) -> list:
        return [(m.name, m.plan, m.run_dirs()) for m in record.models if m.name != ENSEMBLE]

    if (earlier.data, earlier.seeds, layout(earlier)) != (manifest.data, manifest.seeds, layout(manifest)):
        raise LorabenchError(
            f"output directory {out_dir} holds another comparison; run its own command again to continue it, or "
            "choose another --out"
        )
    say(f"continuing the comparison in {out_dir}")
    manifest.created = earlier.created
    before = {entry.name: entry for entry in earlier.models}
    for number, entry in enumerate(manifest.models):
        old = before[entry.name]
        if old.status == "ok":
            manifest.models[number] = old
        elif len(old.seeds) == len(entry.seeds):  # a record from before --seeds has none
            entry.seeds = [was if was.status == "ok" else new for was, new in zip(old.seeds, entry.seeds, strict=True)]
    shutil.rmtree(out_dir / RUNS_DIR / ENSEMBLE, ignore_errors=True)


def _start_manifest(
    plans: dict[str, RunConfig], shared_data: DataConfig, splits: TextSplits, processes: int, seeds: int,
    ensemble: bool = False,
) -> CompareManifest:  # fmt: skip
    """The comparison's record before any model trains: the shared split's sizes and checks, and every run."""
    names = {name: safe_dir_name(name) for name in plans}
    if len(set(names.values())) < len(names):
        raise LorabenchError(f"two models share a directory name: {', '.join(names.values())}; rename one")
    if ensemble and ENSEMBLE in {*names, *names.values()}:
        raise LorabenchError(f"a model named '{ENSEMBLE}' would take the place of compare --ensemble's; rename it")
    rows = {"train": len(splits.train), "validation": len(splits.validation)}
    rows["test"] = len(splits.test) if splits.test is not None else 0
    statuses = []
    for name, plan in plans.items():
        seed_values = [plan.train.seed + k for k in range(seeds)]
        model_dir = f"{RUNS_DIR}/{names[name]}"
        run_dirs = [model_dir] if seeds == 1 else [f"{model_dir}/seed-{seed}" for seed in seed_values]
        runs = [SeedRun(seed=seed, run_dir=run_dir) for seed, run_dir in zip(seed_values, run_dirs, strict=True)]
        plan_text = _describe(name, plan, rows["train"], seed_values)
        statuses.append(ModelStatus(name=name, run_dir=run_dirs[0], plan=plan_text, seeds=runs))
    return CompareManifest(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        data=shared_data.model_dump(mode="json"),
        rows=rows,
        seeds=seeds,
        data_checks=split_checks(splits),
        hardware={**machine_info(), "processes": processes},
        versions=package_versions(VERSIONED_PACKAGES),
        models=statuses,
    )
