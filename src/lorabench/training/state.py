"""The training loop's progress as one object that saves and restores itself (a checkpoint's progress.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from lorabench.core.storage import read_json, write_json

PROGRESS_FILE = "progress.json"


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
