"""Is a run's validation F1 limited by its decision threshold, or by the one model? For finished two-class runs on
the same validation rows, and for the mean of their probabilities, this prints val F1 three ways:

- at the arg-max (what lorabench records as a run's val F1);
- at the threshold that maximises F1 on all the validation rows (what `predict` uses): fitted on the rows it
  is scored on, so it overstates what a new text gets;
- cross-fitted: the threshold fitted on 9/10 of the rows decides the other tenth, over 10 folds, repeated with
  5 shuffles (the spread is printed): an honest figure for "model + calibrated threshold".

    python bench/validation_threshold.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from lorabench.core.metrics import best_threshold, classification_metrics
from lorabench.workflows.label_issues import VALIDATION_FILE

REPEATS, FOLDS = 5, 10


def f1(labels: np.ndarray, decided: np.ndarray) -> float:
    return classification_metrics(labels, decided, 2).f1


def cross_fitted(labels: np.ndarray, positive: np.ndarray, seed: int) -> float:
    decided = np.zeros_like(labels)
    for fit, scored in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(positive, labels):
        decided[scored] = positive[scored] >= best_threshold(labels[fit], positive[fit])
    return f1(labels, decided)


def row(name: str, labels: np.ndarray, positive: np.ndarray) -> str:
    in_sample = f1(labels, positive >= best_threshold(labels, positive))
    crossed = [cross_fitted(labels, positive, seed) for seed in range(REPEATS)]
    return (
        f"| {name} | {f1(labels, positive >= 0.5):.4f} | {in_sample:.4f} | "
        f"{np.mean(crossed):.4f} ({min(crossed):.4f}-{max(crossed):.4f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    frames = [pd.read_csv(run / VALIDATION_FILE).sort_values("id", ignore_index=True) for run in args.runs]
    labels = frames[0]["label"].to_numpy()
    if any(not frame["id"].equals(frames[0]["id"]) for frame in frames):
        raise SystemExit("error: the runs were not validated on the same rows")
    print("| run | val F1 at the arg-max | at the threshold fitted on all rows | cross-fitted (range) |")
    print("|---|---|---|---|")
    for run, frame in zip(args.runs, frames, strict=True):
        print(row(run.name, labels, frame["prob_1"].to_numpy()))
    if len(frames) > 1:
        print(row(f"mean of the {len(frames)}", labels, np.mean([f["prob_1"].to_numpy() for f in frames], axis=0)))


if __name__ == "__main__":
    main()
