"""What `lorabench data` reports and `compare` records about the data: class weights, rows, classes and lengths
per split, missing values, and the checks of the split."""

from __future__ import annotations

import numpy as np

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import DataChecks
from lorabench.data.checks import check_texts
from lorabench.data.files import load_raw_splits
from lorabench.data.sources import TextSplits, load_splits
from lorabench.data.texts import UNLABELLED


def class_weights(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Weights n / (k * count_c) from the labels actually trained on (the study hard-coded them)."""
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    if (counts == 0).any():
        missing = [i for i, c in enumerate(counts) if c == 0]
        raise LorabenchError(f"class ids {missing} have no training rows; every class needs examples")
    return len(labels) / (num_labels * counts)


def describe(config: DataConfig) -> dict:
    """The statistics the study prints before training: rows, classes, missing values, lengths, class weights."""
    raw = load_raw_splits(config)
    splits = load_splits(config)
    stats: dict = {"source": config.source, "label_names": splits.label_names, "splits": {}, "missing": {}}
    for name, frame in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        if frame is None:
            continue
        entry = {
            "rows": len(frame),
            "max_chars": int(frame["text"].str.len().max()),
            "max_words": int(frame["text"].str.split().str.len().max()),
        }
        if (frame["label"] != UNLABELLED).all():
            counts = np.bincount(frame["label"], minlength=splits.num_labels)
            entry["class_counts"] = {str(splits.label_names[i]): int(c) for i, c in enumerate(counts)}
        stats["splits"][name] = entry
    for name, frame in raw.items():
        stats["missing"][name] = {str(col): int(n) for col, n in frame.isna().sum().items()}
    weights = class_weights(splits.train["label"].to_numpy(), splits.num_labels)
    stats["class_weights"] = {str(splits.label_names[i]): round(float(w), 4) for i, w in enumerate(weights)}
    checks = split_checks(splits)
    stats["checks"] = checks.to_dict()
    stats["split"] = split_effect(config, splits, checks, has_own_validation="validation" in raw)
    stats["notes"] = splits.notes
    return stats


def all_texts(config: DataConfig) -> list[str]:
    """Every text the data's splits hold (training, validation, test), as the models read them."""
    splits = load_splits(config)
    frames = [frame for frame in (splits.train, splits.validation, splits.test) if frame is not None]
    return [text for frame in frames for text in frame["text"].tolist()]


def split_checks(splits: TextSplits) -> DataChecks:
    """Duplicates, conflicting labels and overlaps of the split as it is trained and scored."""
    return check_texts(splits.train, splits.validation, splits.test, "text", "label")


def split_effect(config: DataConfig, splits: TextSplits, checks: DataChecks, has_own_validation: bool) -> dict:
    """How many validation rows share a text with training rows, and the split `duplicates: group` would make
    instead (None when the data brings its own validation split or is split that way already)."""
    effect = {
        "duplicates": config.duplicates,
        "conflicts": config.conflicts,
        "rows": {"train": len(splits.train), "validation": len(splits.validation)},
        "validation_rows_in_train": checks.validation_in_train.rows,
        "validation_rows_in_train_normalised": checks.validation_in_train_normalised.rows,
        "grouped_rows": None,
    }
    if config.duplicates == "keep" and not has_own_validation:
        try:
            grouped = load_splits(config.model_copy(update={"duplicates": "group"}))
        except LorabenchError:  # e.g. a single distinct text: no grouped split exists, and the stats still do
            return effect
        effect["grouped_rows"] = {"train": len(grouped.train), "validation": len(grouped.validation)}
    return effect
