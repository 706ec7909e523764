"""Compare several models on one data set: the identical split for all, one row per model, one report.

Each model trains in its own spawned process. On CPU a run's `peak_memory_mb` is its process's peak resident
memory, which in a shared process would carry the previous models' peaks; and a model that takes its process
down (out of memory, a native abort) is recorded like any other failure while the next model still runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from lorabench import record, ui
from lorabench.config import (
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
from lorabench.errors import LorabenchError
from lorabench.ui import say

MANIFEST_FILE = "compare.json"
RUNS_DIR = "runs"
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
) -> dict[str, RunConfig]:
    """Each model's resolved config: preset < shared config < command-line flags < the model's own entry."""
    if not models:
        raise LorabenchError("no models to compare: pass --models a,b or list them under 'models' in --config")
    duplicates = sorted({name for name in models if models.count(name) > 1})
    if duplicates:
        raise LorabenchError(f"model listed twice: {', '.join(duplicates)}")
    shared = {"data": _given(settings.data), "train": _given(settings.train)}
    shared = merge(
        shared, {"data": {"source": data, "test": test, "max_train_rows": max_train_rows}, "train": {"epochs": epochs}}
    )
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
            raise LorabenchError(f"model {name}: {err}") from None
    return plans


def run_dir_name(model: str) -> str:
    """A model name as one safe directory name: 'FacebookAI/roberta-large' -> 'FacebookAI--roberta-large'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model).strip("-.") or "model"


def machine_info() -> dict:
    """Where the comparison ran: CPU, cores, memory, GPU (from nvidia-smi, so no CUDA context is held here)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            query = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            gpus = [line.strip() for line in query.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    memory_gb = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    # Timings mean little on a machine busy with other work: record how busy it was when the comparison began.
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "gpus": gpus,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": load,
    }


def package_versions() -> dict:
    found = {}
    for package in VERSIONED_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, LorabenchError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def train_reporting(config: RunConfig, out_dir: str | Path) -> tuple[str, str]:
    """Train one model; ('ok', '') or ('failed', reason) instead of an exception."""
    try:
        from lorabench.api import train

        train(config, out_dir)
        return "ok", ""
    except Exception as err:  # any failure, a library's own bug included, becomes this model's row
        return "failed", _one_line(err)


def _train_in_child(config: RunConfig, out_dir: str, progress: bool, conn) -> None:
    """Runs in the spawned process: train one model, then send back ('ok', '') or ('failed', reason)."""
    ui.set_progress(progress)
    try:
        conn.send(train_reporting(config, out_dir))
    finally:
        conn.close()


def train_isolated(config: RunConfig, out_dir: Path) -> tuple[str, str]:
    """Train in a fresh process; returns (status, reason), also when the process dies without a word."""
    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and memory
    receive, send = context.Pipe(duplex=False)
    progress = ui.progress_enabled()  # the child starts with fresh module state: hand on --quiet
    process = context.Process(target=_train_in_child, args=(config, str(out_dir), progress, send))
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
            f"the training process was killed by signal {-code} (out of memory?)"
            if code and code < 0
            else f"the training process ended with exit code {code} and no message"
        )
    return status, reason


def _describe(name: str, config: RunConfig, train_rows: int) -> str:
    cap = config.data.max_train_rows
    capped = cap is not None and cap < train_rows
    rows = f"training rows capped at {cap} of {train_rows}" if capped else f"{train_rows} training rows"
    epochs = config.train.epochs
    passes = "one pass" if config.model.name == "tfidf" else f"{epochs} epoch{'s' if epochs > 1 else ''}"
    return f"{name}: {passes}, {rows}"


def compare(
    models: list[str] | None,
    out_dir: str | Path,
    data: str | None = None,
    test: str | None = None,
    epochs: int | None = None,
    max_train_rows: int | None = None,
    config_file: str | Path | None = None,
) -> pd.DataFrame:
    """Train every model into OUT/runs/<model> on the identical split and write the results and the report.

    Returns the results table (one row per model). Bad input fails before anything is written; a model that
    fails to load or train gets a row with its reason and the next model still runs.
    """
    from lorabench.data import load_splits
    from lorabench.distributed import on_main, world
    from lorabench.report import render

    settings = load_compare_config(config_file) if config_file else CompareConfig()
    models = models or list(settings.models)
    plans = plan_runs(models, settings, data, test, epochs, max_train_rows)
    out_dir = Path(out_dir)
    # Under torchrun every process runs this function: rank 0 alone checks and writes, and each model
    # trains in this process (all ranks together) rather than in a child of its own.
    current = world()
    if not current.is_main:
        ui.set_progress(False)

    def check_out_dir() -> None:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise LorabenchError(f"output directory {out_dir} is not empty; choose another --out")

    on_main(check_out_dir, current)
    names = {name: run_dir_name(name) for name in models}
    if len(set(names.values())) < len(names):
        raise LorabenchError(f"two models share a directory name: {', '.join(names.values())}; rename one")
    # Load the shared split once here so bad data fails now, not once per model.
    shared_data = plans[models[0]].data.model_copy(update={"max_train_rows": None})
    splits = load_splits(shared_data)

    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": shared_data.model_dump(mode="json"),
        "rows": {
            "train": len(splits.train),
            "validation": len(splits.validation),
            "test": len(splits.test) if splits.test is not None else 0,
        },
        "hardware": {**machine_info(), "processes": current.size},
        "versions": package_versions(),
        "models": [
            {
                "name": name,
                "run_dir": f"{RUNS_DIR}/{names[name]}",
                "status": "pending",
                "error": "",
                "wall_seconds": None,
                "plan": _describe(name, plans[name], len(splits.train)),
            }
            for name in models
        ],
    }

    def write_manifest() -> None:
        record.write_json(out_dir / MANIFEST_FILE, manifest)

    on_main(write_manifest, current)
    for number, entry in enumerate(manifest["models"], start=1):
        say(f"[{number}/{len(models)}] {entry['plan']}")
        started = time.perf_counter()
        run_dir = out_dir / entry["run_dir"]
        entry["status"], entry["error"] = (
            train_reporting(plans[entry["name"]], run_dir)
            if current.distributed
            else train_isolated(plans[entry["name"]], run_dir)
        )
        entry["wall_seconds"] = round(time.perf_counter() - started, 1)
        if entry["error"]:
            say(f"{entry['name']} failed: {entry['error']}")
        on_main(write_manifest, current)
    return on_main(lambda: render(out_dir), current)
