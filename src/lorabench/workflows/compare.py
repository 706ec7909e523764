"""Compare several models on one data set: the identical split for all, one row per model, one report.

Each model trains in its own spawned process, and its inference cost is then measured in another. On CPU a run's
`peak_memory_mb` is its process's peak resident memory, which in a shared process would carry the previous
models' peaks (and inference's would carry training's); and a model that takes its process down (out of memory,
a native abort) is recorded like any other failure while the next model still runs.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from lorabench.core import console
from lorabench.core.config import (
    DataConfig,
    LoraSettings,
    ModelConfig,
    RunConfig,
    TrainSettings,
    merge,
    read_config_file,
    resolve_config,
    validate_as,
)
from lorabench.core.console import say
from lorabench.core.errors import LorabenchError, first_line, stage
from lorabench.core.runtime import machine_info, package_versions
from lorabench.core.schemas import CompareManifest, ModelStatus, SeedRun
from lorabench.core.storage import MANIFEST_FILE, restored_on_failure, safe_dir_name, write_record
from lorabench.data.sources import TextSplits, load_splits
from lorabench.data.statistics import split_checks
from lorabench.models.registry import classifier_type
from lorabench.training.averaging import ensemble_of_runs
from lorabench.training.distributed import World, on_main, world
from lorabench.training.run import train
from lorabench.workflows.cost import measure_cost
from lorabench.workflows.report import render

RUNS_DIR = "runs"
ENSEMBLE = "ensemble"  # the row and run directory (OUT/runs/ensemble) of compare --ensemble
VERSIONED_PACKAGES = ("lorabench", "torch", "transformers", "peft", "scikit-learn", "numpy", "pandas")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowCap(_Strict):
    """The only data setting one model may change: fewer training rows. Validation and test stay shared."""

    max_train_rows: int | None = Field(None, gt=0)


class ModelEntry(_Strict):
    """One model's own settings; they win over the shared ones and the command line (they are its exceptions)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    data: RowCap = Field(default_factory=RowCap)


class CompareConfig(_Strict):
    """A comparison's config file: shared data and training settings, and per-model entries."""

    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)
    models: dict[str, ModelEntry] = Field(default_factory=dict)


def load_compare_config(path: str | Path) -> CompareConfig:
    return validate_as(CompareConfig, read_config_file(path), "compare config", str(path))


def _given(section: BaseModel) -> dict[str, Any]:
    """Only the values a config file actually set (the defaults must not override a model's preset)."""
    return section.model_dump(mode="json", exclude_unset=True)


def plan_runs(
    models: list[str],
    settings: CompareConfig,
    data: str | None = None,
    test: str | None = None,
    epochs: int | None = None,
    max_train_rows: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, RunConfig]:
    """Each model's resolved config: preset < shared config < command-line flags (`overrides`: any run settings as
    nested sections, under the named ones) < the model's own entry."""
    if not models:
        raise LorabenchError("no models to compare: pass --models a,b or list them under 'models' in --config")
    duplicates = sorted({name for name in models if models.count(name) > 1})
    if duplicates:
        raise LorabenchError(f"model listed twice: {', '.join(duplicates)}")
    shared = {"data": _given(settings.data), "train": _given(settings.train)}
    named = {"data": {"source": data, "test": test, "max_train_rows": max_train_rows}, "train": {"epochs": epochs}}
    shared = merge(merge(shared, overrides or {}), named)
    plans = {}
    for name in models:
        entry = settings.models.get(name, ModelEntry())
        own = {
            "model": _given(entry.model),
            "lora": _given(entry.lora),
            "train": _given(entry.train),
            "data": _given(entry.data),
        }
        try:
            plans[name] = resolve_config(name, None, merge(shared, own))
        except LorabenchError as err:
            raise LorabenchError(f"model {name}: {err}") from err
    return plans


def reporting(function: Callable[..., object], *args: object) -> tuple[str, str]:
    """Call `function(*args)`: ('ok', '') when it returns, ('failed', reason) instead of its exception."""
    try:
        function(*args)
        return "ok", ""
    except Exception as err:  # any failure, a library's own bug included, becomes this model's row
        reason = first_line(err)
        if not isinstance(err, LorabenchError) and str(err).strip():
            reason = f"{type(err).__name__}: {reason}"  # a library's own error: name its type
        return "failed", reason


def train_reporting(config: RunConfig, out_dir: str | Path) -> tuple[str, str]:
    """Train one model; ('ok', '') or ('failed', reason) instead of an exception."""
    return reporting(train, config, out_dir)


def _report_in_child(function: Callable[..., object], args: tuple, progress: bool, conn) -> None:
    """Runs in the spawned process: call the function, then send back ('ok', '') or ('failed', reason)."""
    console.set_progress(progress)
    try:
        conn.send(reporting(function, *args))
    finally:
        conn.close()


def run_isolated(what: str, function: Callable[..., object], *args: object) -> tuple[str, str]:
    """Call `function(*args)` in a fresh process; (status, reason), also when the process dies without a word.
    `what` names the work in that reason."""
    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and memory
    receive, send = context.Pipe(duplex=False)
    progress = console.progress_enabled()  # the child starts with fresh module state: hand on --quiet
    process = context.Process(target=_report_in_child, args=(function, args, progress, send))
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
    """Train in a fresh process, so its peak memory is its own and a crash takes only this model down."""
    return run_isolated("training", train, config, str(out_dir))


def with_seed(config: RunConfig, seed: int) -> RunConfig:
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


def _train_seeds(entry: ModelStatus, plan: RunConfig, out_dir: Path, current: World) -> None:
    """Train every seed of one model, stopping at the first that fails, and set the model's status."""
    trainer = train_reporting if current.distributed else train_isolated
    entry.status = "ok"
    for run in entry.seeds:
        if len(entry.seeds) > 1:
            say(f"{entry.name}: seed {run.seed}")
        started = time.perf_counter()
        run.status, run.error = trainer(with_seed(plan, run.seed), out_dir / run.run_dir)
        run.wall_seconds = round(time.perf_counter() - started, 1)
        if run.status != "ok":
            entry.status = "failed"
            entry.error = f"seed {run.seed}: {run.error}" if len(entry.seeds) > 1 else run.error
            break
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
    in_epochs = classifier_type(config.model.kind).trains_in_epochs
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
) -> pd.DataFrame:
    """Train every model into OUT/runs/<model> on the identical split, measure what using it costs, and write the
    results and the report. With `seeds` N > 1 each model trains N times, with train.seed + 0 .. N-1, into
    OUT/runs/<model>/seed-<seed>, and the results give mean and sd over them. With `ensemble`, the trained
    models' (first seeds') probabilities are then averaged with weights fitted on validation into OUT/runs/ensemble,
    an averaging run with its own row (lorabench.training.averaging.ensemble_of_runs). `overrides` are any other
    run settings every model shares, as nested sections (the command's flags: {"data": {"label_column": ...}}).

    Returns the results table (one row per model). Bad input fails before anything is written; a model that
    fails to load or train gets a row with its reason and the next model still runs.
    """
    if seeds < 1:
        raise LorabenchError(f"seeds must be at least 1, got {seeds}")
    settings = load_compare_config(config_file) if config_file else CompareConfig()
    models = models or list(settings.models)
    plans = plan_runs(models, settings, data, test, epochs, max_train_rows, overrides)
    out_dir = Path(out_dir)
    # Under torchrun every process runs this function: rank 0 alone checks, writes and measures costs, and each
    # model trains in this process (all ranks together) rather than in a child of its own.
    current = world()
    if not current.is_main:
        console.set_progress(False)
    on_main(lambda: _check_out_dir(out_dir), current)
    shared_data = next(iter(plans.values())).data.model_copy(update={"max_train_rows": None})
    splits = load_splits(shared_data)  # here, so bad data fails now and not once per model
    manifest = _start_manifest(plans, shared_data, splits, current.size, seeds, ensemble)
    # a failure of the comparison itself (a model's failure is only its row) leaves --out as it was; rank 0 writes
    with restored_on_failure(out_dir) if current.is_main else contextlib.nullcontext():
        _run_models(manifest, plans, out_dir, splits.validation["text"].tolist(), current)
        if ensemble:
            on_main(functools.partial(_add_ensemble, manifest, out_dir, splits, shared_data), current)
        with stage("writing the results and the report", str(out_dir)):
            return on_main(lambda: render(out_dir), current)


def _run_models(manifest: CompareManifest, plans: dict[str, RunConfig], out_dir: Path, texts: list[str],
                current: World) -> None:  # fmt: skip
    """Train each model (every seed), then measure what using it costs; the manifest is rewritten after each."""

    def write_manifest() -> None:
        write_record(out_dir / MANIFEST_FILE, manifest)

    on_main(write_manifest, current)
    for number, entry in enumerate(manifest.models, start=1):
        say(f"[{number}/{len(manifest.models)}] {entry.plan}")
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


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LorabenchError(f"output directory {out_dir} is not empty; choose another --out")


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
