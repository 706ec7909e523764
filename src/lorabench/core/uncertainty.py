"""How sure is a score? Bootstrap intervals for one model's metrics and for the difference between two models.

A validation set of 1523 tweets gives an F1 that would move by a point or two on another sample of the same size;
these intervals say by how much, so a comparison does not rank models on noise.

Resampling n rows with replacement and counting them per (label, prediction) cell is the same as drawing the cell
counts from a multinomial over the observed cells with probabilities count / n. The bootstrap therefore draws
only those counts, all resamples at once, and computes every metric from them: exact, and independent of n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lorabench.core.errors import LorabenchError

METRICS = ("f1", "precision", "recall", "accuracy")


@dataclass(frozen=True)
class Interval:
    """A metric on all rows (point) and its bootstrap percentile interval."""

    point: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class PairedResult:
    """Model a minus model b on the same rows; `prob_worse` is the share of resamples in which a scores lower."""

    metric: str
    difference: float
    interval: Interval
    prob_worse: float
    tied: bool


def _check_inputs(labels: np.ndarray, predictions: Sequence[np.ndarray], num_labels: int) -> None:
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2, got {num_labels}")
    if labels.size == 0:
        raise ValueError("no rows to score")
    for array in (labels, *predictions):
        if array.shape != labels.shape or array.ndim != 1:
            raise ValueError(f"labels and predictions must be 1-d arrays of one length, got {array.shape}")
        if array.min() < 0 or array.max() >= num_labels:
            raise ValueError(f"class ids must lie in 0..{num_labels - 1}")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def _per_class_counts(
    cell_counts: np.ndarray, class_of_label: np.ndarray, class_of_prediction: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted, actual) per class, shape (..., k), from counts per cell."""
    correct = np.where(class_of_label == class_of_prediction, class_of_label, k)  # k: a wrong cell, counted nowhere
    true_positives = _sum_by_class(cell_counts, correct, k)
    return (
        true_positives,
        _sum_by_class(cell_counts, class_of_prediction, k),
        _sum_by_class(cell_counts, class_of_label, k),
    )


def _sum_by_class(cell_counts: np.ndarray, class_of_cell: np.ndarray, k: int) -> np.ndarray:
    indicator = (class_of_cell[:, None] == np.arange(k)[None, :]).astype(cell_counts.dtype)
    return cell_counts @ indicator


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def _metrics(true_positives: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> dict[str, np.ndarray]:
    """The four metrics from per-class counts of shape (..., k): positive class 1 for two classes, else macro."""
    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, actual)
    f1 = _ratio(2 * true_positives, predicted + actual)
    accuracy = true_positives.sum(axis=-1) / actual.sum(axis=-1)
    if true_positives.shape[-1] == 2:
        return {"f1": f1[..., 1], "precision": precision[..., 1], "recall": recall[..., 1], "accuracy": accuracy}
    return {
        "f1": f1.mean(axis=-1),
        "precision": precision.mean(axis=-1),
        "recall": recall.mean(axis=-1),
        "accuracy": accuracy,
    }


def _scores(
    labels, predictions: Sequence, num_labels: int, resamples: int, seed: int
) -> list[tuple[dict[str, float], dict[str, np.ndarray]]]:
    """Metrics of each model on all rows and on each resample (the same resampled rows for every model).

    Returns one (point, resampled) pair per model: dicts of metric -> float and metric -> array (resamples,)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = [np.asarray(p, dtype=np.int64) for p in predictions]
    _check_inputs(labels, predictions, num_labels)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    # one cell per observed combination of (label, prediction of each model), with its number of rows
    cells, observed = np.unique(np.stack([labels, *predictions]), axis=1, return_counts=True)
    class_of_label, classes_of_predictions = cells[0], cells[1:]

    draws = np.random.default_rng(seed).multinomial(labels.size, observed / labels.size, size=resamples)
    results = []
    for class_of_prediction in classes_of_predictions:
        point = _metrics(*_per_class_counts(observed, class_of_label, class_of_prediction, num_labels))
        resampled = _metrics(*_per_class_counts(draws, class_of_label, class_of_prediction, num_labels))
        results.append(({name: float(value) for name, value in point.items()}, resampled))
    return results


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_metrics(
    labels, predictions, num_labels: int, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Interval]:
    """F1, precision, recall and accuracy with percentile intervals from `resamples` row resamples.

    Two classes: the metrics of the positive class 1; more: macro averages over all `num_labels` classes, the
    definitions of `lorabench.evaluate.classification_metrics`."""
    _check_level(level)
    ((point, resampled),) = _scores(labels, [predictions], num_labels, resamples, seed)
    return {name: Interval(point[name], *_percentiles(resampled[name], level)) for name in METRICS}


def paired_bootstrap(
    labels,
    predictions_a,
    predictions_b,
    num_labels: int,
    metric: str = "f1",
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedResult:
    """Is model a better than model b on these rows, or is the gap within the noise of the sample?

    Both models are scored on the same resampled rows, so the interval of the difference is much narrower than
    two separate intervals suggest: the rows that are hard for one are mostly hard for the other."""
    if metric not in METRICS:
        raise LorabenchError(f"unknown metric '{metric}'; use one of: {', '.join(METRICS)}")
    _check_level(level)
    (point_a, resampled_a), (point_b, resampled_b) = _scores(
        labels, [predictions_a, predictions_b], num_labels, resamples, seed
    )
    difference = point_a[metric] - point_b[metric]
    interval = Interval(difference, *_percentiles(resampled_a[metric] - resampled_b[metric], level))
    return PairedResult(
        metric=metric,
        difference=difference,
        interval=interval,
        prob_worse=float(np.mean(resampled_a[metric] < resampled_b[metric])),
        tied=interval.contains(0.0),
    )


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of a score over training seeds; sd 0.0 for a single run."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("mean_sd needs at least one value")
    sd = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), sd
