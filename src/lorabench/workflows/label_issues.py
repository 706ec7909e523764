"""Likely label errors: labelled rows whose given label a run's held-out probabilities contradict most.

cleanlab's confident learning (`cleanlab.filter.find_label_issues`) estimates from the probabilities how many rows
of each class carry another class's label, flags that many, and ranks them by self-confidence: the probability
the model gives the row's own label, lowest first. The probabilities must come from a model that never trained on
the row: the out-of-fold predictions of `train --folds K` cover every labelled row; without them a run's
validation predictions stand in, and only its validation rows are checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import LabelIssues
from lorabench.core.storage import CONFIG_FILE, RunDir, write_atomic
from lorabench.data.checks import conflicting_texts
from lorabench.data.files import read_table
from lorabench.data.sources import TextSplits, load_splits

OOF_FILE = "oof_predictions.csv"
VALIDATION_FILE = "val_predictions.csv"
ISSUES_FILE = "label_issues.csv"
PROBABILITY_PREFIX = "prob_"
TOP_ROWS = 10  # the flagged rows the console, the JSON and the report show


def find_label_issues(run: Path, data: DataConfig, out: Path | None = None) -> LabelIssues:
    """Rank the run's held-out rows by how strongly the model contradicts their label; write every flagged row
    to `out` (default RUN/label_issues.csv) and count the data's conflicting texts among them."""
    run = Path(run)
    if not run.is_dir():
        raise LorabenchError(f"no run directory at {run}")
    only_validation = not (run / OOF_FILE).is_file()
    path = run / (VALIDATION_FILE if only_validation else OOF_FILE)
    if not path.is_file():
        raise LorabenchError(
            f"{run} holds neither {OOF_FILE} (train --folds K) nor {VALIDATION_FILE} (a finished run): nothing to check"
        )
    predictions = read_table(path)
    names = [
        column[len(PROBABILITY_PREFIX) :] for column in predictions.columns if column.startswith(PROBABILITY_PREFIX)
    ]
    if len(names) < 2:
        raise LorabenchError(f"{path} has no {PROBABILITY_PREFIX}<class> column per class; it is no predictions file")
    probabilities = _probabilities(predictions, names, path)
    given = _given_classes(predictions, names, path)
    splits = load_splits(data)
    if only_validation:
        texts = _validation_texts(run, predictions, data)
    elif "text" in predictions.columns:
        texts = predictions["text"].astype(str)
    else:
        raise LorabenchError(f"{path} has no 'text' column")
    table = _ranked_issues(predictions.get("id"), texts, given, probabilities, names)
    conflicts = _conflicts(splits, texts, table["text"])
    out = Path(out) if out is not None else run / ISSUES_FILE
    write_atomic(out, table.to_csv(index=False))
    return LabelIssues(
        run=str(run),
        predictions=path.name,
        only_validation=only_validation,
        checked_rows=len(predictions),
        flagged_rows=len(table),
        out=str(out),
        top=table.head(TOP_ROWS).to_dict("records"),
        **conflicts,
    )


def read_issues(run: Path) -> pd.DataFrame | None:
    """A run's label_issues.csv as written (ids as text); None when the run has none."""
    path = Path(run) / ISSUES_FILE
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
        raise LorabenchError(f"cannot read {path}: {first_line(err)}") from err


def _probabilities(predictions: pd.DataFrame, names: list[str], path: Path) -> np.ndarray:
    columns = [PROBABILITY_PREFIX + name for name in names]
    values = predictions[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise LorabenchError(f"{path}: every {PROBABILITY_PREFIX}<class> cell must be a probability in [0, 1]")
    return values


def _given_classes(predictions: pd.DataFrame, names: list[str], path: Path) -> np.ndarray:
    """Each row's given class index: lorabench writes the class id in `label`; class names are taken too."""
    if "label" not in predictions.columns:
        raise LorabenchError(f"{path} has no 'label' column (the given labels)")
    labels = predictions["label"].astype(str).str.strip()
    for index in ({str(i): i for i in range(len(names))}, {name: i for i, name in enumerate(names)}):
        if labels.isin(index.keys()).all():
            return labels.map(index).to_numpy(dtype=np.int64)
    unknown = sorted(set(labels) - {str(i) for i in range(len(names))} - set(names))
    raise LorabenchError(
        f"{path}: labels {', '.join(unknown[:5])} are neither class ids nor class names ({', '.join(names)})"
    )


def _validation_texts(run: Path, predictions: pd.DataFrame, data: DataConfig) -> pd.Series:
    """The texts of the run's validation rows: its data settings applied to the data given, so the split is the
    one the run was scored on; refused when those rows are not the predictions file's (ids and labels)."""
    if not (run / CONFIG_FILE).is_file():
        raise LorabenchError(f"{run} has no {CONFIG_FILE}: cannot tell which rows its {VALIDATION_FILE} scored")
    settings = RunDir(run).config().data.model_copy(update={"source": data.source, "test": None})
    validation = load_splits(settings).validation
    keys = ["id", "label"] if "id" in predictions.columns and "id" in validation.columns else ["label"]
    expected = validation[keys].astype(str).reset_index(drop=True)
    if not expected.equals(predictions[keys].astype(str).reset_index(drop=True)):
        raise LorabenchError(
            f"the rows of {run / VALIDATION_FILE} are not the validation rows of {data.source} split as the run "
            "split it; pass the data the run was trained on"
        )
    return validation["text"].reset_index(drop=True)


def _ranked_issues(
    ids: pd.Series | None, texts: pd.Series, given: np.ndarray, probabilities: np.ndarray, names: list[str]
) -> pd.DataFrame:
    """The flagged rows, most likely mislabelled first: rank, id, given and predicted label, P(given), text."""
    try:
        import cleanlab.filter  # optional dependency (lorabench[labels]), needed by this command only
    except ImportError as err:
        raise LorabenchError("--label-issues needs cleanlab: pip install 'lorabench[labels]'") from err
    try:
        flagged = cleanlab.filter.find_label_issues(
            given, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
        )
    except (ValueError, AssertionError) as err:  # e.g. a class no row is labelled with
        raise LorabenchError(f"cleanlab cannot rank these predictions: {first_line(err)}") from err
    # A text labelled both ways has a wrong label for certain; cleanlab's per-class thresholds can still pass a
    # row the model only mildly contradicts, so the rows of such texts whose label the model does not predict
    # join the list, ranked like the rest by the probability of their given label (self-confidence).
    in_conflict = texts.astype(str).isin(conflicting_texts(texts, pd.Series(given))).to_numpy()
    contradicted = np.flatnonzero(in_conflict & (probabilities.argmax(axis=1) != given))
    flagged = np.union1d(flagged, contradicted)
    flagged = flagged[np.argsort(probabilities[flagged, given[flagged]], kind="stable")]
    table = pd.DataFrame({"rank": np.arange(1, len(flagged) + 1)})
    if ids is not None:
        table["id"] = ids.to_numpy()[flagged]
    table["given_label"] = [names[i] for i in given[flagged]]
    table["predicted_label"] = [names[i] for i in probabilities[flagged].argmax(axis=1)]
    table["given_label_prob"] = probabilities[flagged, given[flagged]].round(4)
    table["text"] = texts.to_numpy()[flagged]
    table["conflicting_text"] = in_conflict[flagged]
    return table


def _conflicts(splits: TextSplits, checked: pd.Series, flagged: pd.Series) -> dict[str, int]:
    """How many of the data's texts labelled both ways were checked, and flagged: errors the data plants itself,
    as each such text has a row whose label is wrong."""
    labelled = pd.concat([splits.train, splits.validation])
    conflicting = conflicting_texts(labelled["text"], labelled["label"])
    return {
        "conflicting_texts": len(conflicting),
        "conflicting_texts_checked": len(conflicting & set(checked)),
        "conflicting_texts_flagged": len(conflicting & set(flagged)),
    }
