"""A killed `train` resumes where its last checkpoint left it and ends exactly where an uninterrupted run ends.

Every run is `python -m lorabench.cli` in a fresh process (forked: tests/forked.py) with the same environment, so
thread counts (and hence float summation order) match. The kill is a real SIGKILL that the process sends itself at
a fixed training step (counted through the loss function), which makes the kill point deterministic without a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import forked
from conftest import failure_text
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import CHECKPOINT_DIR, RunDir, recover_dirs

# 192 training rows in batches of 16 rows (batch_tokens 0: a known number of steps): 12 steps per epoch; with
# --save-every-steps 5 the checkpoints fall after global steps 5, 10, 12 (end of epoch 1), 15, 20 and 24.
FLAGS = [
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--lr",
    "0.001",
    "--max-length",
    "48",
    "--seed",
    "3",
    "--lora-dropout",
    "0.3",
]
KILL_AFTER_LOSS = """
import os, signal, sys
import torch
from lorabench.cli import main

kill_at, calls = int(os.environ["KILL_AT_LOSS"]), [0]
forward = torch.nn.CrossEntropyLoss.forward

def counted(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, *args, **kwargs)

torch.nn.CrossEntropyLoss.forward = counted
sys.argv = ["lorabench", *sys.argv[1:]]
main()
"""


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra}


def lorabench(*args, kill_at_loss: int | None = None, processes: int = 1) -> subprocess.CompletedProcess:
    """`lorabench -q ARGS` in a fresh process (forked; `processes` > 1: as torchrun's workers), optionally killed at
    a loss call."""
    if kill_at_loss is None:
        command, env = [sys.executable, "-m", "lorabench.cli"], _env()
    else:
        command, env = [sys.executable, "-c", KILL_AFTER_LOSS], _env(KILL_AT_LOSS=str(kill_at_loss))
    command = [*command, "-q", *map(str, args)]
    if processes == 1:
        return forked.run(command, env)
    return forked.launch(command, env, processes)


def outcome(run_dir: Path) -> dict:
    """What must match between runs: summary metrics, per-epoch metrics (less wall time), predictions, adapter."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    return {
        "summary": {k: summary[k] for k in ("val", "test", "best_epoch", "threshold", "rows", "truncated_texts")},
        "metrics": metrics,
        "val_predictions": (run_dir / "val_predictions.csv").read_text(),
        "test_predictions": (run_dir / "test_predictions.csv").read_text(),
        "adapter": (run_dir / "adapter" / "adapter_model.safetensors").read_bytes(),
    }


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> list[str]:
    config = tmp_path_factory.mktemp("recipe") / "fixed_batches.yaml"
    config.write_text("train:\n  batch_tokens: 0\n", encoding="utf-8")
    return [*FLAGS, "--config", str(config)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_models, small_data, recipe) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = lorabench("train", "--model", tiny_models["roberta"], "--data", small_data, "--out", out, *recipe)
    assert done.returncode == 0, done.stderr
    result = outcome(out)
    assert [row["epoch"] for row in result["metrics"]] == [1, 2]
    return result


@pytest.mark.parametrize(
    "kill_at_loss, progress_at_kill, resume_args",
    [
        # killed in step 8 of epoch 1: resumes mid-epoch from the step-5 checkpoint, with only --resume --out
        (8, {"epoch": 0, "step": 5}, []),
        # killed in step 2 of epoch 2: resumes from the end-of-epoch-1 checkpoint, with the full command repeated
        (14, {"epoch": 1, "step": 0}, None),
    ],
)
def test_killed_run_resumes_to_the_same_result(
    kill_at_loss, progress_at_kill, resume_args, uninterrupted, recipe, tiny_models, small_data, tmp_path
):
    out = tmp_path / "run"
    command = [
        "train",
        "--model",
        tiny_models["roberta"],
        "--data",
        small_data,
        "--out",
        out,
        *recipe,
        "--save-every-steps",
        "5",
    ]
    killed = lorabench(*command, kill_at_loss=kill_at_loss)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    progress = json.loads((out / CHECKPOINT_DIR / "progress.json").read_text())
    assert {k: progress[k] for k in progress_at_kill} == progress_at_kill
    assert not (out / "summary.json").exists()

    resumed = lorabench("train", "--out", out, "--resume") if resume_args == [] else lorabench(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(out) == uninterrupted


def test_a_kill_inside_a_checkpoint_swap_is_recovered(tmp_path):
    """replace_dir renames the old copy away, then the new one in: a kill between leaves only `.name.old`."""
    run = tmp_path / "run"
    (run / f".{CHECKPOINT_DIR}.old").mkdir(parents=True)
    (run / f".{CHECKPOINT_DIR}.old" / "progress.json").write_text('{"epoch": 1}')
    (run / f".{CHECKPOINT_DIR}.k3j2x9").mkdir()  # a half-built new copy
    recover_dirs(run)
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_DIR]
    assert json.loads((run / CHECKPOINT_DIR / "progress.json").read_text()) == {"epoch": 1}


def test_resume_prepares_a_killed_directory(tmp_path, small_data, tiny_models):
    from lorabench.api import resolve_config

    config = resolve_config(str(tiny_models["roberta"]), overrides={"data": {"source": str(small_data)}})
    run = RunDir(tmp_path / "run")
    assert run.prepare(config, resume=True) is False  # nothing to resume yet: a fresh run
    (run.path / f".{CHECKPOINT_DIR}.old").mkdir()
    (run.path / ".metrics.jsonl.x1y2.tmp").write_text('{"epoch": 1, "train_')  # a killed atomic write
    assert run.check(config, resume=True) is True
    assert run.prepare(config, resume=True) is True
    assert sorted(p.name for p in run.path.iterdir()) == [CHECKPOINT_DIR, "config.yaml"]


def test_every_record_file_is_written_atomically(tmp_path, monkeypatch):
    """A kill during a write leaves the previous file whole: content goes to a temporary name first."""
    from lorabench.core import storage as record

    target = tmp_path / "summary.json"
    record.write_json(target, {"f1": 0.5})

    def killed_mid_write(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the kill, after the temporary file was opened

    monkeypatch.setattr(os, "fsync", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        record.write_json(target, {"f1": 0.9})
    assert json.loads(target.read_text()) == {"f1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_killed_two_process_run_resumes_to_the_same_result(recipe, tiny_models, small_data, tmp_path):
    """Two processes each draw dropout for their own rows, so each needs its own random state back: a run killed
        mid-epoch and resumed ends byte-identical to an uninterrupted two-process run (that one process may not resume it
    is test_a_checkpoint_resumes_only_under_the_launch_that_wrote_it)."""
    # 8 rows per process: a global batch of 16, 12 steps per epoch, the step-5 checkpoint is mid-epoch
    command = [
        "train",
        "--model",
        tiny_models["roberta"],
        "--data",
        small_data,
        *recipe,
        "--batch-size",
        "8",
        "--save-every-steps",
        "5",
    ]
    done = lorabench(*command, "--out", tmp_path / "uninterrupted", processes=2)
    assert done.returncode == 0, failure_text(done)

    out = tmp_path / "killed"
    killed = lorabench(*command, "--out", out, kill_at_loss=8, processes=2)
    assert killed.returncode != 0
    progress = json.loads((out / CHECKPOINT_DIR / "progress.json").read_text())
    assert (progress["epoch"], progress["step"], progress["processes"]) == (0, 5, 2)

    resumed = lorabench("train", "--out", out, "--resume", processes=2)
    assert resumed.returncode == 0, failure_text(resumed)
    assert outcome(out) == outcome(tmp_path / "uninterrupted")


def test_a_checkpoint_resumes_only_under_the_launch_that_wrote_it(tmp_path):
    """The global batch is the per-process budget x the processes: another launch would change every batch."""
    from lorabench.training.state import TrainState, read_checkpoint, write_checkpoint

    write_checkpoint(tmp_path / "checkpoint", {"step": torch.tensor(5)}, TrainState(epoch=1, step=5), processes=2)
    tensors, state = read_checkpoint(tmp_path / "checkpoint", processes=2)
    assert int(tensors["step"]) == 5 and (state.epoch, state.step) == (1, 5)
    with pytest.raises(LorabenchError, match="^resume this run with the launch that trained it: 2 processes, not 1$"):
        read_checkpoint(tmp_path / "checkpoint", processes=1)
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"cut")
    with pytest.raises(LorabenchError, match="^cannot resume from .*checkpoint: "):
        read_checkpoint(tmp_path / "checkpoint", processes=2)
