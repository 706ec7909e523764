"""`compare --backend ray`: every member's training runs as a Ray task with the CPUs (and GPUs) it asks for, on a
local Ray or the cluster at $RAY_ADDRESS, so a grid of trainings uses every machine the user has. Each task
trains through the same `train` as the sequential path and writes the same run record; a failing member is its
own row. Inference cost is measured afterwards, one member at a time on the driver's machine, so that no
member's figures carry another's load. Every node needs lorabench, and the data, models and --out at the same
paths (shared storage)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lorabench.core.config import RunConfig
from lorabench.core.console import say, set_progress
from lorabench.core.schemas import ModelStatus, SeedRun
from lorabench.workflows.cluster import ray_session
from lorabench.workflows.members import reporting


def _train_task(config: RunConfig, run_dir: str, threads: int, cwd: str) -> tuple[str, str, float, float]:
    """One member's seed in a Ray worker: (status, reason, started, ended), Unix times."""
    from lorabench.training.run import train  # deferred: the worker imports the training stack itself

    os.chdir(cwd)  # relative --data / --model paths mean the driver's
    set_progress(False)  # parallel members' progress bars would interleave
    torch.set_num_threads(threads)
    started = time.time()
    status, reason = reporting(train, config, Path(run_dir))
    return status, reason, started, time.time()


def train_on_ray(
    pending: list[tuple[ModelStatus, SeedRun, RunConfig]],
    out_dir: Path,
    cpus: int,
    gpus: float,
    on_finished: Callable[[], None],
) -> None:
    """Train every pending (member, seed, config) as a Ray task; each finished task sets its seed's record, and
    `on_finished` is called after each (compare rewrites its record there)."""
    import ray  # optional dependency (lorabench[ray])

    with ray_session():
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_train_task)
        waiting = {
            task.remote(config, str(out_dir / run.run_dir), cpus, os.getcwd()): (entry, run)
            for entry, run, config in pending
        }
        say(f"{len(waiting)} trainings submitted to Ray ({cpus} CPUs{f', {gpus} GPUs' if gpus else ''} each)")
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            entry, run = waiting.pop(done[0])
            run.status, run.error, run.started, run.ended = ray.get(done[0])
            run.wall_seconds = round(run.ended - run.started, 1)
            say(f"{entry.name}{f' seed {run.seed}' if len(entry.seeds) > 1 else ''}: {run.status} {run.error}".rstrip())
            on_finished()
