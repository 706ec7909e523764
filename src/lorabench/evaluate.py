"""Stage 5: class probabilities for a split, and the study's metrics computed locally with scikit-learn.

`evaluate.load` is never used: it downloads metric code from the hub at run time.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from lorabench.packing import batch_logits
from lorabench.tokenization import Encoded, length_sorted_batches
from lorabench.ui import progress_bar


def predict_proba(
    model,
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    autocast_dtype,
    pad_id: int,
    padding_side: str = "right",
    description: str = "evaluate",
    packed: bool = False,
) -> np.ndarray:
    """Softmax probabilities in the input's row order, computed in length-sorted batches (packed or padded)."""
    model.eval()
    probabilities = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(encoded.lengths, batch_size)
    with progress_bar(description, len(encoded)) as bar, torch.inference_mode():
        for rows in batches:
            sequences = [encoded.input_ids[i] for i in rows]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = batch_logits(model, sequences, pad_id, padding_side, device, packed)
            probabilities[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            bar.advance(len(rows))
    return probabilities


def predicted_labels(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Arg-max class, or for two classes 'positive when P(positive) >= threshold' when one is given."""
    if threshold is not None and probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def best_threshold(labels: np.ndarray, positive_probabilities: np.ndarray) -> float:
    """The decision threshold on P(positive) that maximises F1 on these (validation) labels.

    Candidates are the observed probabilities themselves (scikit-learn's PR curve), so the result is exact.
    """
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, positive_probabilities)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict:
    """Precision, recall and F1 of the positive class (id 1) for two classes, macro averages for more."""
    if num_labels == 2:
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, average="binary", pos_label=1, zero_division=0
        )
    else:
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, average="macro", labels=list(range(num_labels)), zero_division=0
        )
    return {
        "f1": round(float(f1), 6),
        "precision": round(float(precision), 6),
        "recall": round(float(recall), 6),
        "accuracy": round(float(accuracy_score(labels, predictions)), 6),
    }


def write_predictions(path, frame, probabilities: np.ndarray, label_names: list) -> None:
    """A run's predictions file: the split's id and label columns, predicted class name, one probability per class."""
    from lorabench.record import write_atomic

    table = frame.drop(columns=["text"]).copy()
    table["prediction"] = [label_names[i] for i in predicted_labels(probabilities)]
    for class_id, name in enumerate(label_names):
        table[f"prob_{name}"] = probabilities[:, class_id].round(6)
    write_atomic(path, table.to_csv(index=False))
