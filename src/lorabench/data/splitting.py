"""Which labelled rows train and which validate: the study's seeded split, near duplicates kept on one side, or
stratified folds over every labelled row."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.data.checks import grouped_split_indices, normalise_texts, resolve_conflicts
from lorabench.data.texts import label_values


def split_indices(n_rows: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices exactly as `datasets.Dataset.train_test_split(train_size=, seed=)` draws them."""
    import datasets

    rows = datasets.Dataset.from_dict({"row": np.arange(n_rows)})
    parts = rows.train_test_split(train_size=train_size, seed=seed)
    return np.asarray(parts["train"]["row"]), np.asarray(parts["test"]["row"])


def labelled_parts(
    frames: dict[str, pd.DataFrame], config: DataConfig, notes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
    """Training and validation rows: conflicting labels resolved as `data.conflicts` says, then validation split
    off (at random, or with near duplicates kept together: `data.duplicates`) unless the source has its own; with
    `data.folds`, the fold of every labelled row too (`fold_parts`)."""
    labelled = {split: frames[split] for split in ("train", "validation") if split in frames}
    if config.conflicts != "keep":
        together, note = resolve_conflicts(
            pd.concat(labelled, names=["split"]), config.text_column, config.label_column, config.conflicts
        )
        notes.append(note)
        in_split = together.index.get_level_values("split")
        labelled = {split: together[in_split == split].droplevel("split") for split in labelled}
    if config.folds:
        return fold_parts(pd.concat(labelled.values()), config)
    train = labelled["train"]
    if "validation" in labelled:
        if config.duplicates == "group":
            notes.append("duplicates: group does not apply: the data has its own validation split")
        return train, labelled["validation"], None
    if len(train) < 4:
        raise LorabenchError(f"training data has only {len(train)} rows; at least 4 are needed to split off validation")
    if config.duplicates == "group":
        texts = train[config.text_column].tolist()
        train_idx, val_idx = grouped_split_indices(texts, config.train_size, config.split_seed)
    else:
        train_idx, val_idx = split_indices(len(train), config.train_size, config.split_seed)
    return train.iloc[train_idx], train.iloc[val_idx], None


def fold_parts(labelled: pd.DataFrame, config: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """`data.fold`'s split of all labelled rows (its rows validate, the others train), or with no fold chosen all
    rows on both sides (each is validated by the fold that held it out); and every row's fold."""
    folds = fold_ids(labelled, config)
    if config.fold is None:
        return labelled, labelled, folds
    return labelled[folds != config.fold], labelled[folds == config.fold], folds[folds == config.fold]


def fold_ids(labelled: pd.DataFrame, config: DataConfig) -> np.ndarray:
    """Each row's fold: stratified by label, seeded by `data.split_seed`, and with `data.duplicates: group` every
    normalised text in one fold (scikit-learn's StratifiedKFold / StratifiedGroupKFold)."""
    labels = [str(label) for label in label_values(labelled[config.label_column], "train", config.label_column)]
    smallest = pd.Series(labels).value_counts()
    if smallest.min() < config.folds:
        raise LorabenchError(
            f"data.folds {config.folds} needs at least {config.folds} rows of every class; class "
            f"{smallest.idxmin()!r} has {smallest.min()}"
        )
    rows = np.zeros(len(labels))
    if config.duplicates == "group":
        groups = pd.factorize(normalise_texts(labelled[config.text_column]))[0]
        if groups.max() + 1 < config.folds:
            raise LorabenchError(
                f"data.folds {config.folds} needs as many distinct texts; the data has {groups.max() + 1}"
            )
        splitter = StratifiedGroupKFold(config.folds, shuffle=True, random_state=config.split_seed)
        held_out = splitter.split(rows, labels, groups)
    else:
        held_out = StratifiedKFold(config.folds, shuffle=True, random_state=config.split_seed).split(rows, labels)
    folds = np.empty(len(labels), dtype=np.int64)
    for fold, (_, rows_held_out) in enumerate(held_out):
        folds[rows_held_out] = fold
    return folds
