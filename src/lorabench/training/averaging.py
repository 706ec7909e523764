"""Writing an averaging (`ensemble`) run from finished member runs: the one mechanism behind `train --folds K`
(lorabench.training.folds) and `compare --ensemble`.

Members were scored on validation and test when they trained, so the average is formed from their prediction
files and no member model is loaded. The record is a normal run directory (predictions, threshold, summary) whose
members sit in RUN/members/<name>/; `predict`, `serve` and `export` load it through the registry like any run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.core.config import DataConfig, ModelConfig, RunConfig
from lorabench.core.console import say
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import predicted_labels
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import CHECKPOINT_DIR, RunDir, safe_dir_name
from lorabench.core.uncertainty import bootstrap_metrics
from lorabench.data.sources import TextSplits
from lorabench.models import ensemble
from lorabench.training.records import record_run, write_predictions
from lorabench.training.tracking import TRACKER_DIRS

GRID_POINTS = 5000  # most weight vectors tried: tenths for up to 6 members, coarser steps for more
BOOTSTRAP_RESAMPLES = 1000  # as compare's intervals (lorabench.workflows.scoring)
OOF_FILE = "oof_predictions.csv"


def member_probabilities(run_dir: Path, split: str, frame: pd.DataFrame, label_names: list) -> np.ndarray:
    """A member's probabilities from its `<split>_predictions.csv`, refused unless it scored exactly the rows of
    `frame` (same count, ids and labels, in order)."""
    path = run_dir / f"{split}_predictions.csv"
    if not path.is_file():
        raise LorabenchError(f"{run_dir} has no {path.name}: it was not scored on the {split} rows")
    scored = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    keys = ["id", "label"] if "id" in frame.columns else ["label"]
    # as the file reads back: every cell a string, a missing id an empty one
    expected = frame[keys].astype(object).where(frame[keys].notna(), "").astype(str).reset_index(drop=True)
    if len(scored) != len(frame) or not scored[keys].astype(str).equals(expected):
        raise LorabenchError(
            f"{run_dir} scored other {split} rows than the ensemble's ({len(scored)} rows, expected {len(frame)} "
            f"with the same {' and '.join(keys)}s); an ensemble's members must share one split"
        )
    return scored[[f"prob_{name}" for name in label_names]].to_numpy(dtype=np.float64)


def weight_grid(members: int) -> np.ndarray:
    """Every weight vector on the simplex in steps of 1/s (the finest s with at most GRID_POINTS vectors), one per
    row, the members alone (a weight of 1) included."""
    steps = 10
    while steps > 1 and math.comb(steps + members - 1, members - 1) > GRID_POINTS:
        steps -= 1
    # stars and bars: the positions of members - 1 bars among steps + members - 1 places
    bars = np.array(list(itertools.combinations(range(steps + members - 1), members - 1)), dtype=np.int64)
    bounds = np.hstack([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), steps + members - 1)])
    return (np.diff(bounds, axis=1) - 1) / steps


def fit_weights(labels: np.ndarray, probabilities: list[np.ndarray]) -> np.ndarray:
    """The grid's weights whose average gives the validation rows' true classes the highest mean log-probability.

    Log-likelihood rather than F1: it is smooth in the weights and uses every row's confidence, where F1 at the
    arg-max moves only when a row crosses 0.5 and would pick among many grid points on the noise of a few rows;
    the decision threshold is then chosen for F1 as in every run. The grid holds each member alone, so the fit
    is never worse than the best member's in log-likelihood."""
    true_class = np.stack([p[np.arange(len(labels)), labels] for p in probabilities])  # (members, rows)
    grid = weight_grid(len(probabilities))
    log_likelihood = np.log(np.clip(grid @ true_class, 1e-12, None)).mean(axis=1)
    return grid[int(np.argmax(log_likelihood))]


def average(probabilities: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(weight * p for weight, p in zip(weights, probabilities, strict=True))


def record_ensemble(
    run: RunDir,
    splits: TextSplits,
    members: dict[str, Path],
    weights: np.ndarray,
    val_probabilities: np.ndarray,
    model: str,
    model_source: str,
) -> RunSummary:
    """Write the averaging run into `run`, whose RUN/members/<name>/ hold the `members` already: its weights,
    validation predictions `val_probabilities` (with their bootstrap intervals in the summary), the members' test
    probabilities averaged with `weights`, the threshold and the summary."""
    names = splits.label_names
    summaries = {name: RunDir(path).summary() for name, path in members.items()}
    ensemble.write_weights(run.file(ensemble.MODEL_DIR), dict(zip(members, map(float, weights), strict=True)), names)
    scores = {"val": val_probabilities}
    if splits.test is not None:
        test = [member_probabilities(path, "test", splits.test, names) for path in members.values()]
        scores["test"] = average(test, weights)
    labels = splits.validation["label"].to_numpy()
    intervals = bootstrap_metrics(labels, predicted_labels(val_probabilities), len(names), BOOTSTRAP_RESAMPLES)
    details = {
        **_combined_details(list(summaries.values())),
        "val_intervals": {metric: (round(i.low, 6), round(i.high, 6)) for metric, i in intervals.items()},
    }
    member_notes = [_member_note(name, s, w) for (name, s), w in zip(summaries.items(), weights, strict=True)]
    splits = dataclasses.replace(splits, notes=[*splits.notes, *member_notes])
    summary = record_run(ensemble.KIND, splits, run, model, model_source, details, lambda split, _: scores[split])
    f1 = intervals["f1"]
    say(f"{model}: val F1 {f1.point:.4f} [{f1.low:.4f}, {f1.high:.4f}] on {len(labels)} rows (95% bootstrap)")
    return summary


def _combined_details(summaries: list[RunSummary]) -> dict:
    """Summary fields of the whole ensemble: times and parameters add up, memory is the largest member's, epochs
    the most any member trained (each member's are in the notes)."""
    first = summaries[0]
    trainable, total = sum(s.trainable_params for s in summaries), sum(s.total_params for s in summaries)
    return {
        "best_epoch": max(s.best_epoch for s in summaries),
        "epochs": max(s.epochs for s in summaries),
        "train_seconds": round(sum(s.train_seconds for s in summaries), 2),
        "peak_memory_mb": max(s.peak_memory_mb for s in summaries),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4) if total else 100.0,
        "truncated_texts": max(s.truncated_texts for s in summaries),
        "device": first.device,
        "processes": first.processes,
        "precision": first.precision,
        "versions": first.versions,
    }


def _member_note(name: str, summary: RunSummary, weight: float) -> str:
    stopped = f", stopped early after epoch {summary.stopped_early_after}" if summary.stopped_early_after else ""
    return (
        f"member {name} (weight {weight:.2f}): val F1 {summary.val.f1:.4f} on its own validation rows, "
        f"best epoch {summary.best_epoch} of {summary.epochs}{stopped}"
    )


def write_oof(run: RunDir, splits: TextSplits, probabilities: np.ndarray) -> None:
    """oof_predictions.csv: every labelled row once, with its text and the probabilities of the fold run that
    held it out (the columns of val_predictions.csv, plus text)."""
    write_predictions(run.file(OOF_FILE), splits.validation, probabilities, splits.label_names, with_text=True)


def ensemble_of_runs(member_runs: dict[str, Path], out_dir: Path, splits: TextSplits, data: DataConfig) -> RunSummary:
    """compare --ensemble: the finished runs' probabilities averaged with weights fitted on the validation rows
    only (`fit_weights`; test probabilities are only combined with them), written as a run to `out_dir` with the
    members of non-zero weight copied in. Every run must have been scored on the rows of `splits`."""
    if len(member_runs) < 2:
        raise LorabenchError(f"an ensemble needs at least two trained models, not {len(member_runs)}")
    names = splits.label_names
    for name, path in member_runs.items():
        member_data = RunDir(path).config().data.model_copy(update={"max_train_rows": None})
        if member_data != data:
            raise LorabenchError(f"{name} was trained on other data settings than the comparison's shared split")
        if list(RunDir(path).summary().label_names) != list(names):
            raise LorabenchError(f"{name} has other classes than the comparison's split ({names})")
    validation = [member_probabilities(path, "val", splits.validation, names) for path in member_runs.values()]
    weights = fit_weights(splits.validation["label"].to_numpy(), validation)
    kept = {safe_dir_name(name): path for (name, path), w in zip(member_runs.items(), weights, strict=True) if w > 0}
    dropped = [name for name, w in zip(member_runs, weights, strict=True) if w == 0]
    source = "+".join(member_runs)
    config = RunConfig(model=ModelConfig(name="ensemble", kind=ensemble.KIND, source=source), data=data)
    run = RunDir(out_dir)
    run.prepare(config, resume=False)
    copies = {directory: run.file(ensemble.MODEL_DIR) / directory for directory in kept}
    for directory, path in kept.items():
        copy_member(path, copies[directory])
    note = (
        "weights fitted on these validation rows (mean log-likelihood, a grid over the simplex): its val metrics "
        "are those of the fitted average, slightly optimistic as any choice made on validation"
        + (f"; weight 0, left out: {', '.join(dropped)}" if dropped else "")
    )
    splits = dataclasses.replace(splits, notes=[*splits.notes, note])
    kept_weights = weights[weights > 0]
    kept_validation = [p for p, w in zip(validation, weights, strict=True) if w > 0]
    return record_ensemble(
        run, splits, copies, kept_weights, average(kept_validation, kept_weights), "ensemble", source
    )


def copy_member(run_dir: Path, target: Path) -> None:
    """A finished run as a member: everything but its resume checkpoint and tracking logs."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, *TRACKER_DIRS.values(), ".*"))
