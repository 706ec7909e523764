"""Stage 1: labelled texts as the models see them, assembled from the data modules: read (files), texts and
labels (texts), split or folded (splitting); statistics describes them.

Everything downstream sees `TextSplits`: three frames with the columns `text`, `label` (class id, or -1 when the
test split carries no labels) and `id` when the source has one, plus the class names in id order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.data.files import load_raw_splits
from lorabench.data.splitting import labelled_parts
from lorabench.data.texts import (
    UNLABELLED,
    check_ids,
    clean_texts,
    label_values,
    labelled_frame,
    require_column,
    template_texts,
)


@dataclass
class TextSplits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None
    label_names: list
    notes: list[str] = field(default_factory=list)
    folds: np.ndarray | None = None  # with data.folds: the fold that holds out each validation row

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def test_has_labels(self) -> bool:
        return self.test is not None and bool((self.test["label"] != UNLABELLED).all())


def load_splits(config: DataConfig) -> TextSplits:
    """Read, validate and split the data; refuse what cannot be trained on with one clear message."""
    frames = load_raw_splits(config)
    if config.text_template:  # the built texts take the text column's place (created when the data lacks it)
        frames = {
            split: frame.assign(**{config.text_column: template_texts(frame, config.text_template, f"{split} data")})
            for split, frame in frames.items()
        }
    notes: list[str] = []
    train_raw = frames["train"]
    for split, frame in frames.items():
        require_column(frame, config.text_column, "text", split)
    require_column(train_raw, config.label_column, "label", "train")
    frames = {
        split: clean_texts(frame, config.text_column, split, config.strict, notes) for split, frame in frames.items()
    }
    for split, frame in frames.items():
        check_ids(frame, config.id_column, split, notes)

    if "validation" in frames:
        require_column(frames["validation"], config.label_column, "label", "validation")
    train_part, val_part, folds = labelled_parts(frames, config, notes)
    if config.max_train_rows and len(train_part) > config.max_train_rows:
        notes.append(f"training rows capped at {config.max_train_rows} of {len(train_part)} (max_train_rows)")
        train_part = train_part.iloc[: config.max_train_rows]

    train_labels = label_values(train_part[config.label_column], "train", config.label_column)
    names = sorted(set(train_labels), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise LorabenchError(f"training data has a single class ({names[0]!r}); at least two are needed")
    val_labels = label_values(val_part[config.label_column], "validation", config.label_column)
    if isinstance(names[0], str):
        val_labels = [str(v) for v in val_labels]

    test = None
    if "test" in frames:
        test_raw = frames["test"]
        test_labels = None
        if config.label_column in test_raw.columns and test_raw[config.label_column].notna().all():
            test_labels = label_values(test_raw[config.label_column], "test", config.label_column)
            if isinstance(names[0], str):
                test_labels = [str(v) for v in test_labels]
        test = labelled_frame(test_raw, config, test_labels, names)
    return TextSplits(
        train=labelled_frame(train_part, config, train_labels, names),
        validation=labelled_frame(val_part, config, val_labels, names),
        test=test,
        label_names=names,
        notes=notes,
        folds=folds,
    )
