"""Checks of the texts themselves: duplicates, conflicting labels and leaks between splits.

A text that is in both training and validation data inflates the validation score; one text labelled both ways
caps the reachable accuracy. Both are common in scraped data (the disaster tweets have retweets and copies whose
only difference is a link or a mention), so they are counted exactly and after `normalise_text`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import DataChecks, TextGroups

_URL = re.compile(r"(?:https?://|www\.)\S+")
_MENTION = re.compile(r"(?<!\w)@\w+")
_EXAMPLE_CHARS = 160
CONFLICT_MODES = ("keep", "majority", "drop")


def normalise_text(text: str) -> str:
    """The text as a reader would compare it: lower-case, without links and @mentions, whitespace collapsed.

    Retweets and reposts differ from their source only in these, so equal normalised texts are near duplicates."""
    text = _MENTION.sub(" ", _URL.sub(" ", text.lower()))
    return " ".join(text.split())


def normalise_texts(texts: pd.Series) -> pd.Series:
    """`normalise_text` of every entry, keeping the index."""
    return texts.astype(str).map(normalise_text)


def _groups(rows_per_text: pd.Series, examples: int) -> TextGroups:
    """Summarise a count of rows per text; examples are the texts with the most rows, ties in text order."""
    ordered = rows_per_text.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    shown = [text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1] + "…" for text in ordered.index]
    return TextGroups(texts=len(ordered), rows=int(ordered.sum()), examples=shown[:examples])


def _repeated(texts: pd.Series, examples: int) -> TextGroups:
    rows_per_text = texts.value_counts()
    return _groups(rows_per_text[rows_per_text > 1], examples)


def _conflicting(texts: pd.Series, labels: pd.Series, examples: int) -> TextGroups:
    return _groups(texts[_in_conflicting_group(texts, labels)].value_counts(), examples)


def _in_conflicting_group(texts: pd.Series, labels: pd.Series) -> pd.Series:
    """Whether each row's text occurs with more than one label."""
    return labels.groupby(texts).transform("nunique") > 1


def conflicting_texts(texts: pd.Series, labels: pd.Series) -> set[str]:
    """The distinct texts that occur with more than one label (those `check_texts` counts as conflicts)."""
    texts = texts.astype(str)
    return set(texts[_in_conflicting_group(texts, labels)])


def _overlaps(
    split_texts: pd.Series | None, reference: pd.Series, reference_normalised: pd.Series, examples: int
) -> tuple[TextGroups | None, TextGroups | None]:
    """Rows of a split (and their distinct texts) whose text occurs in the reference data: exact, normalised."""
    if split_texts is None:
        return None, None
    exact = split_texts[split_texts.isin(set(reference))]
    normalised = normalise_texts(split_texts)
    normalised = normalised[normalised.isin(set(reference_normalised))]
    return _groups(exact.value_counts(), examples), _groups(normalised.value_counts(), examples)


def _texts(frame: pd.DataFrame | None, column: str, split: str) -> pd.Series | None:
    """The split's texts as strings, without missing ones; None for a split that was not given."""
    if frame is None:
        return None
    return _column(frame, column, split).dropna().astype(str)


def _column(frame: pd.DataFrame, column: str, split: str) -> pd.Series:
    if column not in frame.columns:
        raise LorabenchError(f"{split} data has no column '{column}' (columns: {', '.join(map(str, frame.columns))})")
    return frame[column]


def check_texts(
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    test: pd.DataFrame | None,
    text_column: str = "text",
    label_column: str = "target",
    examples: int = 3,
) -> DataChecks:
    """Count duplicates, conflicting labels and cross-split overlaps, exactly and after normalisation.

    Train and validation are checked together for duplicates and conflicts, as they usually come from one file;
    rows with a missing text are left out."""
    labelled = pd.concat(
        [
            pd.DataFrame({"text": _column(frame, text_column, split), "label": _column(frame, label_column, split)})
            for split, frame in (("train", train), ("validation", validation))
            if frame is not None
        ],
        ignore_index=True,
    ).dropna(subset=["text"])
    texts, labels = labelled["text"].astype(str), labelled["label"]
    normalised = normalise_texts(texts)
    train_texts = _texts(train, text_column, "train")
    validation_in_train = _overlaps(
        _texts(validation, text_column, "validation"), train_texts, normalise_texts(train_texts), examples
    )
    test_in_labelled = _overlaps(_texts(test, text_column, "test"), texts, normalised, examples)
    return DataChecks(
        labelled_rows=len(texts),
        duplicates=_repeated(texts, examples),
        duplicates_normalised=_repeated(normalised, examples),
        conflicts=_conflicting(texts, labels, examples),
        conflicts_normalised=_conflicting(normalised, labels, examples),
        validation_in_train=validation_in_train[0],
        validation_in_train_normalised=validation_in_train[1],
        test_in_labelled=test_in_labelled[0],
        test_in_labelled_normalised=test_in_labelled[1],
    )


def grouped_split_indices(texts: Sequence[str], train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices (each in row order) with every normalised text on one side only.

    A random row split puts copies of one tweet on both sides, and the model is then scored on texts it was
    trained on. Whole groups are shuffled (seeded) and the prefix of them whose row count comes closest to
    `train_size` of the rows becomes the training split."""
    if not 0 < train_size < 1:
        raise ValueError(f"train_size must lie strictly between 0 and 1, got {train_size}")
    group_of_row = pd.factorize(normalise_texts(pd.Series(list(texts), dtype=object)))[0]
    group_count = group_of_row.max() + 1 if group_of_row.size else 0
    if group_count < 2:
        raise LorabenchError(f"cannot split {group_count} distinct text(s) into training and validation data")
    order = np.random.default_rng(seed).permutation(group_count)
    rows_so_far = np.cumsum(np.bincount(group_of_row, minlength=group_count)[order])
    target = train_size * group_of_row.size
    # take 1 .. group_count - 1 groups, so that neither side is empty
    taken = 1 + int(np.argmin(np.abs(rows_so_far[:-1] - target)))
    in_train = np.isin(group_of_row, order[:taken])
    return np.flatnonzero(in_train), np.flatnonzero(~in_train)


def resolve_conflicts(
    frame: pd.DataFrame, text_column: str, label_column: str, mode: Literal["keep", "majority", "drop"]
) -> tuple[pd.DataFrame, str]:
    """Deal with texts that occur with more than one label, and say what was done.

    keep: leave them (the model sees the noise the data has); majority: give every row of such a text the label
    most of its rows have, and drop the text when the labels tie; drop: remove all rows of such texts."""
    if mode not in CONFLICT_MODES:
        raise LorabenchError(f"unknown conflict mode '{mode}'; use one of: {', '.join(CONFLICT_MODES)}")
    texts, labels = frame[text_column], frame[label_column]
    conflicting = _in_conflicting_group(texts, labels).to_numpy()
    if not conflicting.any():
        return frame, "no texts with conflicting labels"
    groups = f"{int(conflicting.sum())} rows of {texts[conflicting].nunique()} texts with conflicting labels"
    if mode == "keep":
        return frame, f"kept {groups}"
    if mode == "drop":
        return frame.loc[~conflicting], f"dropped {groups}"

    rows_per_label = labels[conflicting].groupby(texts[conflicting]).value_counts()
    top_count = rows_per_label.groupby(level=0).transform("max")
    top = rows_per_label.index[rows_per_label == top_count]
    winners = pd.Series(top.get_level_values(1), index=top.get_level_values(0))  # text -> its most common label(s)
    tied_texts = winners.index[winners.index.duplicated()].unique()
    majority = winners.drop(tied_texts)
    tied = texts.isin(tied_texts).to_numpy()
    relabel = conflicting & ~tied
    old_labels = labels[relabel]
    new_labels = texts[relabel].map(majority)
    resolved = frame.loc[~tied].copy()
    resolved.loc[relabel[~tied], label_column] = new_labels.to_numpy()
    return resolved, (
        f"{groups}: {len(majority)} texts got their majority label ({int((new_labels != old_labels).sum())} rows "
        f"changed), {len(tied_texts)} texts whose labels tie were dropped ({int(tied.sum())} rows)"
    )
