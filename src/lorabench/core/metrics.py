"""The study's metrics, computed locally with scikit-learn, and the decision rule every kind of classifier shares.

`evaluate.load` is never used: it downloads metric code from the hub at run time.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_curve, precision_recall_fscore_support

from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import Metrics


def predicted_labels(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Arg-max class, or for two classes 'positive when P(positive) >= threshold' when one is given."""
    if threshold is not None and probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def best_threshold(labels: np.ndarray, positive_probabilities: np.ndarray) -> float:
    """The decision threshold on P(positive) that maximises F1 on these (validation) labels.

    Candidates are the observed probabilities themselves (scikit-learn's PR curve), so the result is exact.
    """
    precision, recall, thresholds = precision_recall_curve(labels, positive_probabilities)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> Metrics:
    """Precision, recall and F1 of the positive class (id 1) for two classes, macro averages for more."""
    if num_labels == 2:
        averaging = {"average": "binary", "pos_label": 1}
    else:
        averaging = {"average": "macro", "labels": list(range(num_labels))}
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, zero_division=0, **averaging)
    return Metrics(
        f1=round(float(f1), 6),
        precision=round(float(precision), 6),
        recall=round(float(recall), 6),
        accuracy=round(float(accuracy_score(labels, predictions)), 6),
    )


def decide(probabilities: np.ndarray, label_names: list, threshold: float | None) -> tuple[list, np.ndarray]:
    """Label names and scores: P(positive) for two classes (the threshold applies to it), else P(predicted class)."""
    ids = predicted_labels(probabilities, threshold)
    scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities[np.arange(len(ids)), ids]
    return [label_names[i] for i in ids], scores


def check_threshold(threshold: float | None, label_names: list) -> None:
    if threshold is None:
        return
    if len(label_names) != 2:
        raise LorabenchError(f"--threshold applies to two-class runs; this run has {len(label_names)} classes")
    if not 0.0 <= threshold <= 1.0:
        raise LorabenchError(f"--threshold must lie between 0 and 1, not {threshold}")


def probability_columns(probabilities: np.ndarray, label_names: list) -> dict[str, np.ndarray]:
    """`prob_<class name>` per class in label_names order, to 6 decimals: a run's predictions files and
    `predict --probabilities` name and round them alike, so their columns compare one to one."""
    return {f"prob_{name}": probabilities[:, class_id].round(6) for class_id, name in enumerate(label_names)}
