"""A training checkpoint: the loop's progress as one object that saves and restores itself (progress.json) beside
the tensors an exact resume needs (state.pt), swapped in as one directory."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.storage import read_json, replace_dir, write_atomic, write_json

PROGRESS_FILE = "progress.json"
TENSORS_FILE = "state.pt"


@dataclass
class TrainState:
    """Where training stands: finished epochs, batches done of the next one (a mid-epoch checkpoint), its running
    loss, the best epoch so far and the seconds spent training."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    rows_seen: int = 0
    best_f1: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0

    def save(self, directory: Path, processes: int) -> None:
        """Written with the launch size: resuming under another one would change every global batch."""
        write_json(directory / PROGRESS_FILE, {**asdict(self), "processes": processes})

    @classmethod
    def load(cls, directory: Path) -> tuple[TrainState, int]:
        """The saved state and the number of processes that trained it."""
        saved = read_json(directory / PROGRESS_FILE)
        processes = saved.pop("processes", 1)
        return cls(**saved), processes


def write_checkpoint(path: Path, tensors: dict, state: TrainState, processes: int) -> None:
    """The tensors (weights, optimizer, schedule, random states) and the progress, replacing `path` at once."""

    def build(directory: Path) -> None:
        buffer = io.BytesIO()  # serialised first: a full disk is then an OSError with the size it needed
        torch.save(tensors, buffer)
        write_atomic(directory / TENSORS_FILE, buffer.getvalue())
        state.save(directory, processes)

    replace_dir(build, path)


def read_checkpoint(path: Path, processes: int) -> tuple[dict, TrainState]:
    """The saved tensors and progress; refused in one line when damaged or written by another launch size."""
    try:
        tensors = torch.load(path / TENSORS_FILE, map_location="cpu", weights_only=True)
        state, trained_by = TrainState.load(path)
    except Exception as err:  # a damaged checkpoint: torch, pickle and JSON each raise their own types
        raise LorabenchError(f"cannot resume from {path}: {first_line(err)}") from err
    if trained_by != processes:
        # the global batch is the per-process budget x the processes: another count would change every batch
        plural = "es" if trained_by > 1 else ""
        raise LorabenchError(
            f"resume this run with the launch that trained it: {trained_by} process{plural}, not {processes}"
        )
    return tensors, state
