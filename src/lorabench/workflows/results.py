"""A comparison's records read back: compare.json and, per model, every seed's summary, the first seed's
predictions and its inference cost. The report and its statistics are computed from these alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import CompareManifest, InferenceCost, ModelStatus, RunSummary
from lorabench.core.storage import MANIFEST_FILE, RunDir, read_record

SPLITS = ("val", "test")  # the prefixes of summary.json's metrics and of <split>_predictions.csv


@dataclass
class ModelResult:
    name: str
    run_dir: Path  # the first seed's run
    status: str
    error: str
    wall_seconds: float | None
    cost_error: str = ""
    summaries: list[RunSummary] = field(default_factory=list)  # one per seed, the first seed's first
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # split -> the first seed's, labelled only
    cost: InferenceCost | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def summary(self) -> RunSummary:
        return self.summaries[0]

    @property
    def validation(self) -> pd.DataFrame:
        return self.predictions["val"]

    def labelled_splits(self) -> list[str]:
        """The splits with labels, so with metrics (validation always, test when its file had labels)."""
        return [split for split in SPLITS if getattr(self.summary, split) is not None]

    def scores(self, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
        """True class ids and the class probabilities (columns in label order) of a labelled split."""
        frame = self.predictions[split]
        probabilities = frame[[f"prob_{name}" for name in self.summary.label_names]].to_numpy(dtype=np.float64)
        return frame["label"].to_numpy(dtype=np.int64), probabilities

    def decisions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """True class ids and the arg-max decisions, the ones the summary's metrics score."""
        labels, probabilities = self.scores(split)
        return labels, probabilities.argmax(axis=1)


def row_keys(frame: pd.DataFrame) -> list[str]:
    """The columns that identify a predictions file's rows: id (when the data has one) and label."""
    return ["id", "label"] if "id" in frame.columns else ["label"]


def same_rows(frame: pd.DataFrame, reference: pd.DataFrame) -> bool:
    """Whether two predictions files score the same rows in the same order (ids and labels)."""
    keys = row_keys(reference)
    return list(frame.columns[: len(keys)]) == keys and frame[keys].equals(reference[keys])


def _read_runs(result: ModelResult, run_dirs: list[Path]) -> None:
    result.summaries = [RunDir(run_dir).summary() for run_dir in run_dirs]
    for split in result.labelled_splits():
        result.predictions[split] = pd.read_csv(result.run_dir / f"{split}_predictions.csv", dtype={"id": str})
    try:
        result.cost = RunDir(result.run_dir).cost()
    except LorabenchError as err:  # the model itself is fine: only its cost goes unreported
        result.cost_error = first_line(err)


def _result(out_dir: Path, entry: ModelStatus) -> ModelResult:
    """One model's result; a finished model whose records are gone or damaged counts as failed."""
    result = ModelResult(
        entry.name, out_dir / entry.run_dir, entry.status, entry.error, entry.wall_seconds, entry.cost_error
    )
    if result.ok:
        try:
            _read_runs(result, [out_dir / run_dir for run_dir in entry.run_dirs()])
        except (LorabenchError, OSError, ValueError, KeyError) as err:
            result.status, result.error = "failed", f"run record unreadable: {first_line(err)}"
    return result


def load_results(out_dir: str | Path) -> tuple[CompareManifest, list[ModelResult]]:
    """The comparison's manifest and one result per model."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise LorabenchError(f"{out_dir} holds no comparison (no {MANIFEST_FILE}); run `lorabench compare` first")
    remedy = "run `lorabench compare` again into a new --out"
    manifest = read_record(manifest_path, CompareManifest, "comparison record", remedy)
    return manifest, [_result(out_dir, entry) for entry in manifest.models]
