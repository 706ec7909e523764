"""Texts and labels out of the raw frames: the columns the user named, text templates, empty texts and ids, and
label values turned into class ids."""

from __future__ import annotations

import math
import string

import numpy as np
import pandas as pd

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.data.files import delimiter_hint

UNLABELLED = -1  # the label id of a row without a label (an unlabelled test split)


def require_column(frame: pd.DataFrame, column: str, role: str, split: str) -> None:
    if column in frame.columns:
        return
    hint = delimiter_hint(str(frame.columns[0])) if len(frame.columns) == 1 else ""
    raise LorabenchError(
        f"{split} data has no {role} column '{column}' (columns: {', '.join(map(str, frame.columns))}){hint}"
    )


def template_columns(template: str) -> list[str]:
    """The columns a text template names, in order; refuses a template that names none."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # an unmatched brace
        raise LorabenchError(f"data.text_template {template!r} is not a valid template: {err}") from err
    if not fields or not all(fields):
        raise LorabenchError(
            f"data.text_template {template!r} must name its columns in braces, e.g. '{{keyword}}: {{text}}'"
        )
    return list(dict.fromkeys(fields))


def template_texts(frame: pd.DataFrame, template: str, source: str) -> pd.Series:
    """Each row's text built from the template's columns, missing values as empty strings: one function for
    training, predict and serve, so a model sees its texts built the same way everywhere."""
    columns = template_columns(template)
    unknown = [column for column in columns if column not in frame.columns]
    if unknown:
        raise LorabenchError(
            f"data.text_template names columns that {source} does not have: {', '.join(unknown)} "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    values = frame[columns].astype(object).where(frame[columns].notna(), "").astype(str)
    return pd.Series([template.format_map(row) for row in values.to_dict("records")], index=frame.index, dtype=object)


def clean_texts(frame: pd.DataFrame, column: str, split: str, strict: bool, notes: list[str]) -> pd.DataFrame:
    """Drop rows whose text is missing or blank, counting them (or refuse them when strict)."""
    texts = frame[column]
    empty = texts.isna() | texts.astype(str).str.strip().eq("")
    if empty.any():
        if strict:
            raise LorabenchError(
                f"{split} data has {int(empty.sum())} empty or missing texts in column '{column}' (--strict)"
            )
        notes.append(f"skipped {int(empty.sum())} {split} rows with an empty or missing text")
        frame = frame.loc[~empty]
        if frame.empty:
            raise LorabenchError(f"{split} data has no non-empty texts in column '{column}'")
    frame = frame.copy()
    frame[column] = frame[column].astype(str)
    return frame


def check_ids(frame: pd.DataFrame, column: str, split: str, notes: list[str]) -> None:
    """Ids name the rows of the prediction files (a Kaggle submission is the test file's): refuse missing or
    duplicate test ids, which would corrupt it, and only note them in labelled splits."""
    if column not in frame.columns:
        return
    ids = frame[column]
    duplicates = ids[ids.notna() & ids.duplicated()].astype(str).unique().tolist()
    problems = []
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate ids (e.g. {', '.join(duplicates[:3])})")
    if ids.isna().any():
        problems.append(f"{int(ids.isna().sum())} rows without an id")
    if not problems:
        return
    if split == "test":
        raise LorabenchError(
            f"test data has {' and '.join(problems)} in column '{column}'; "
            "every test row needs its own id in the predictions"
        )
    notes.append(f"{split} data has {' and '.join(problems)} in column '{column}'")


def label_values(values: pd.Series, split: str, column: str) -> list:
    """Labels are either integer class ids (>= 0) or class names; anything else is refused."""
    if values.isna().any():
        raise LorabenchError(f"{split} data has {int(values.isna().sum())} rows without a label in column '{column}'")
    parsed = []
    for value in values.tolist():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, np.integer)):
            parsed.append(int(value))
            continue
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise LorabenchError(
                    f"{split} label {value!r} in column '{column}' is neither an integer class id nor a class name"
                )
            parsed.append(int(value))
            continue
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            parsed.append(text)
            continue
        if not math.isfinite(number) or not number.is_integer():
            raise LorabenchError(
                f"{split} label {text!r} in column '{column}' is neither an integer class id nor a class name"
            )
        parsed.append(int(number))
    kinds = {type(v) for v in parsed}
    if kinds == {int} and min(parsed) < 0:
        raise LorabenchError(f"{split} labels must be class ids >= 0; found {min(parsed)} in column '{column}'")
    if len(kinds) > 1:
        parsed = [str(v) for v in parsed]  # mixed ids and names: treat all as names
    return parsed


def labelled_frame(frame: pd.DataFrame, config: DataConfig, labels: list | None, names: list) -> pd.DataFrame:
    out = pd.DataFrame({"text": frame[config.text_column].to_numpy()})
    if config.id_column in frame.columns:
        out.insert(0, "id", frame[config.id_column].to_numpy())
    if labels is None:
        out["label"] = UNLABELLED
    else:
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in labels if v not in index})
        if unknown:
            raise LorabenchError(f"labels {', '.join(unknown[:5])} do not occur in the training data")
        out["label"] = np.array([index[v] for v in labels], dtype=np.int64)
    return out
