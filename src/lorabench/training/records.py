"""The end of every run, whatever its kind: score the splits, choose the threshold, write predictions and summary.

Trainers differ in how they fit; what a finished run records is written here once, so every kind's run directory
reads back the same way (lorabench.core.schemas.RunSummary).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lorabench.core.config import RunConfig
from lorabench.core.console import say
from lorabench.core.errors import InternalError
from lorabench.core.metrics import best_threshold, classification_metrics, predicted_labels, probability_columns
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir, write_atomic
from lorabench.data.sources import TextSplits
from lorabench.data.statistics import class_weights
from lorabench.models.registry import Classifier
from lorabench.training import distributed
from lorabench.training.tracking import make_tracker

SPLITS = (("val", "validation"), ("test", "test"))
EpochCallback = Callable[[int, dict], None]
RELOAD_TOLERANCE = 1e-6  # a saved model's probabilities against the same model's in memory


def write_predictions(
    path: Path, frame: pd.DataFrame, probabilities: np.ndarray, label_names: list, with_text: bool = False
) -> None:
    """A run's predictions file: the split's id (and with `with_text` text) and label columns, predicted class
    name, one probability per class."""
    table = frame.copy() if with_text else frame.drop(columns=["text"])
    table["prediction"] = [label_names[i] for i in predicted_labels(probabilities)]
    table = table.assign(**probability_columns(probabilities, label_names))
    # Python < 3.13's csv writer leaves a \r inside a cell unquoted, and readers take it for a line break: quote
    # every cell of a file whose ids or class names hold one (other files are written as before).
    cells = [
        *table.columns,
        *table["prediction"],
        *(value for key in ("id", "text") if key in table for value in table[key]),
    ]
    quoting = csv.QUOTE_ALL if any("\r" in str(cell) for cell in cells) else csv.QUOTE_MINIMAL
    write_atomic(path, table.to_csv(index=False, quoting=quoting))


def saved_copy(classifier: Classifier, run: RunDir, texts: list[str]) -> Classifier:
    """The classifier as read back from the run's files, for kinds fitted in memory (they have `read_saved`).

    Training scores its splits with this copy, as `predict` and `serve` will, and checks it against the model in
    memory on `texts`: a file that reloads as another model (an array saved without its strides, say) stops the
    run with an internal error instead of hiding behind the model still in memory."""
    saved = classifier.read_saved(run.path)
    difference = float(np.abs(saved.predict_proba(texts) - classifier.predict_proba(texts)).max(initial=0.0))
    if difference > RELOAD_TOLERANCE:
        raise InternalError(
            f"the {classifier.kind} model saved in {run.path} reloads with other probabilities (up to {difference:.3g} "
            "apart)"
        )
    return saved


def one_pass_trainer(fit: Callable[[RunConfig, RunDir, bool, EpochCallback | None], RunSummary]):
    """A trainer for a kind fitted in one pass (tfidf, probe, prompt): rank 0 alone fits it under torchrun and
    the other processes wait for its summary."""

    @functools.wraps(fit)
    def trainer(
        config: RunConfig, out_dir: str | Path, resume: bool = False, on_epoch_end: EpochCallback | None = None
    ) -> RunSummary:
        return distributed.on_main(lambda: fit(config, RunDir(out_dir), resume, on_epoch_end), distributed.world())

    return trainer


def finish_one_pass(
    classifier: Classifier,
    config: RunConfig,
    splits: TextSplits,
    run: RunDir,
    details: dict[str, Any],
    train_loss: float | None,
    on_epoch_end: EpochCallback | None,
    check_rows: int | None = None,
) -> RunSummary:
    """The end of a one-pass run: its saved copy (checked against the model in memory on `check_rows` validation
    rows, all by default) scores the splits, the run is recorded as epoch 1, trackers get it, the callback too."""
    saved = saved_copy(classifier, run, splits.validation["text"].tolist()[:check_rows])
    summary = finish_run(saved, splits, run, config.model.name, config.model.source, details)
    row = {"epoch": 1, "train_loss": None if train_loss is None else round(float(train_loss), 6),
           **{f"val_{k}": v for k, v in summary.val.model_dump().items()}, "seconds": details["train_seconds"]}  # fmt: skip
    run.append_metrics(row)
    tracker = make_tracker(config.train.tracking, run.path, config.model_dump(mode="json"), run.path.name)
    tracker.log({key: value for key, value in row.items() if value is not None}, step=1)
    tracker.finish(summary.model_dump())
    if on_epoch_end is not None:
        on_epoch_end(1, row)
    return summary


def finish_run(
    classifier: Classifier,
    splits: TextSplits,
    run: RunDir,
    model: str,
    model_source: str,
    details: dict[str, Any],
    score: Callable[[str, pd.DataFrame], np.ndarray] | None = None,
) -> RunSummary:
    """Score validation and test with the final model, record the F1-maximising threshold (two classes) and
    write `<split>_predictions.csv` and summary.json. `score(split, frame)` defaults to the classifier's
    `predict_proba` on the frame's texts; `details` are the kind's own summary fields (epochs, time, sizes...)."""
    score = score or (lambda _split, frame: classifier.predict_proba(frame["text"].tolist()))
    summary = record_run(classifier.kind, splits, run, model, model_source, details, score)
    classifier.threshold = summary.threshold
    return summary


def record_run(
    kind: str,
    splits: TextSplits,
    run: RunDir,
    model: str,
    model_source: str,
    details: dict[str, Any],
    score: Callable[[str, pd.DataFrame], np.ndarray],
) -> RunSummary:
    """`finish_run` for a kind whose split probabilities `score(split, frame)` already knows (an average of runs
    that were scored when they trained): predictions, threshold and summary of a run of `kind`."""
    names = splits.label_names
    metrics, threshold = {}, None
    for split, attribute in SPLITS:
        frame = getattr(splits, attribute)
        metrics[split] = None
        if frame is None:
            continue
        probabilities = score(split, frame)
        labels = frame["label"].to_numpy()
        if split == "val" and len(names) == 2:
            threshold = round(best_threshold(labels, probabilities[:, 1]), 6)
        write_predictions(run.file(f"{split}_predictions.csv"), frame, probabilities, names)
        if bool((labels >= 0).all()):
            metrics[split] = classification_metrics(labels, predicted_labels(probabilities), len(names))
    summary = RunSummary(
        model=model,
        model_source=model_source,
        kind=kind,
        val=metrics["val"],
        test=metrics["test"],
        label_names=names,
        threshold=threshold,
        rows={"train": len(splits.train), "validation": len(splits.validation), "test": _rows(splits.test)},
        max_text_chars=int(splits.train["text"].str.len().max()),
        class_weights=[round(float(w), 6) for w in class_weights(splits.train["label"].to_numpy(), len(names))],
        notes=splits.notes,
        **details,
    )
    run.write_summary(summary)
    say(f"best epoch {summary.best_epoch}: val F1 {summary.val.f1:.4f}; record in {run.path}")
    return summary


def _rows(frame: pd.DataFrame | None) -> int:
    return len(frame) if frame is not None else 0
