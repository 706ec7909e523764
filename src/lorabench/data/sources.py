"""Stage 1: read labelled texts (hub data set, directory or file), check them, split them, weigh the classes.

Everything downstream sees `TextSplits`: three frames with the columns `text`, `label` (class id, or -1 when the
test split carries no labels) and `id` when the source has one, plus the class names in id order.
"""

from __future__ import annotations

import io
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import DataChecks
from lorabench.data.checks import check_texts, grouped_split_indices, normalise_texts, resolve_conflicts

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
UNLABELLED = -1


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


def file_kind(path: Path) -> str:
    """'csv', 'parquet' or 'jsonl' for an existing data file; refuses anything else in one line."""
    if not path.exists():
        raise LorabenchError(f"data file not found: {path}")
    if not path.is_file():
        raise LorabenchError(f"not a file: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise LorabenchError(
            f"unknown data format '{path.suffix or path.name}' for {path}; use CSV, Parquet or JSON Lines"
        )
    return kind


def csv_options(path: Path) -> dict:
    """How every CSV is read, whole or in chunks: tab-separated for .tsv, every column as text, only empty cells
    missing (so an id like 007 or a text like 'NA' stays as written)."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    return {"sep": sep, "dtype": str, "keep_default_na": False, "na_values": [""]}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one CSV / Parquet / JSON Lines file, turning every way it can be broken into one clear error."""
    path = Path(path)
    kind = file_kind(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise LorabenchError(f"cannot read {path}: {err.strerror}") from err
    if not raw.strip():
        raise LorabenchError(f"data file is empty: {path}")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(io.BytesIO(raw))
        else:
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as err:
                raise LorabenchError(
                    f"{path} is not UTF-8 (invalid byte 0x{raw[err.start]:02x} at offset {err.start}); "
                    "re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
                ) from err
            if kind == "csv":
                options = csv_options(path)
                try:
                    frame = pd.read_csv(io.StringIO(text), **options)
                except pd.errors.ParserError as err:
                    header = text.partition("\n")[0]
                    hint = _delimiter_hint(header) if options["sep"] not in header else ""
                    raise LorabenchError(f"cannot parse {path} as csv: {first_line(err)}{hint}") from err
            else:
                frame = pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except LorabenchError:
        raise
    except Exception as err:  # pandas, csv and pyarrow (corrupt Parquet) each raise their own types
        raise LorabenchError(f"cannot parse {path} as {kind}: {first_line(err)}") from err
    if frame.empty:
        raise LorabenchError(f"{path} has a header but no rows")
    return frame


def _delimiter_hint(header: str) -> str:
    """A hint for a file whose header is split by another delimiter than the one its type implies."""
    delimiter = next((d for d in (";", "\t", "|", ",") if d in header), None)
    return (
        f"; the header '{header[:60]}' looks delimited by {delimiter!r} - is the delimiter wrong?" if delimiter else ""
    )


def _find_split_file(directory: Path, split: str) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for suffix in FORMATS:
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _load_hub(source: str) -> dict[str, pd.DataFrame]:
    """Load a data set from the Hugging Face hub; kept for users online, never reached in tests."""
    import datasets

    try:
        loaded = datasets.load_dataset(source)
    except Exception as err:  # offline, unknown id, gated: all end the same way for the user
        raise LorabenchError(
            f"cannot load data set '{source}' from the Hugging Face hub ({type(err).__name__}); "
            "pass --data with a local directory or file, e.g. --data ../shared/data/disaster_tweets"
        ) from err
    return {name: split.to_pandas() for name, split in loaded.items()}


def load_raw_splits(config: DataConfig) -> dict[str, pd.DataFrame]:
    """Return the raw frames named train / validation / test that the data source provides."""
    source = Path(config.source)
    if source.is_dir():
        frames = {}
        for split in SPLIT_NAMES:
            found = _find_split_file(source, split)
            if found is not None:
                frames[split] = read_table(found)
        if "train" not in frames:
            raise LorabenchError(
                f"no training data in directory {source}: expected train.csv, train.parquet or train.jsonl"
            )
    elif source.exists() or source.suffix.lower() in FORMATS or str(config.source).startswith((".", "/")):
        frames = {"train": read_table(source)}
    else:
        frames = _load_hub(config.source)
        if "train" not in frames:
            raise LorabenchError(f"data set '{config.source}' has no 'train' split (it has: {', '.join(frames)})")
    if config.test:
        frames["test"] = read_table(config.test)
    return frames


def require_column(frame: pd.DataFrame, column: str, role: str, split: str) -> None:
    if column in frame.columns:
        return
    hint = _delimiter_hint(str(frame.columns[0])) if len(frame.columns) == 1 else ""
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


def _clean_texts(frame: pd.DataFrame, column: str, split: str, strict: bool, notes: list[str]) -> pd.DataFrame:
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


def _check_ids(frame: pd.DataFrame, column: str, split: str, notes: list[str]) -> None:
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


def _label_values(values: pd.Series, split: str, column: str) -> list:
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


def _frame(frame: pd.DataFrame, config: DataConfig, labels: list | None, names: list) -> pd.DataFrame:
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


def split_indices(n_rows: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices exactly as `datasets.Dataset.train_test_split(train_size=, seed=)` draws them."""
    import datasets

    rows = datasets.Dataset.from_dict({"row": np.arange(n_rows)})
    parts = rows.train_test_split(train_size=train_size, seed=seed)
    return np.asarray(parts["train"]["row"]), np.asarray(parts["test"]["row"])


def _labelled_parts(
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
    labels = [str(label) for label in _label_values(labelled[config.label_column], "train", config.label_column)]
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
        split: _clean_texts(frame, config.text_column, split, config.strict, notes) for split, frame in frames.items()
    }
    for split, frame in frames.items():
        _check_ids(frame, config.id_column, split, notes)

    if "validation" in frames:
        require_column(frames["validation"], config.label_column, "label", "validation")
    train_part, val_part, folds = _labelled_parts(frames, config, notes)
    if config.max_train_rows and len(train_part) > config.max_train_rows:
        notes.append(f"training rows capped at {config.max_train_rows} of {len(train_part)} (max_train_rows)")
        train_part = train_part.iloc[: config.max_train_rows]

    train_labels = _label_values(train_part[config.label_column], "train", config.label_column)
    names = sorted(set(train_labels), key=lambda v: (isinstance(v, str), v))
    if len(names) < 2:
        raise LorabenchError(f"training data has a single class ({names[0]!r}); at least two are needed")
    val_labels = _label_values(val_part[config.label_column], "validation", config.label_column)
    if isinstance(names[0], str):
        val_labels = [str(v) for v in val_labels]

    test = None
    if "test" in frames:
        test_raw = frames["test"]
        test_labels = None
        if config.label_column in test_raw.columns and test_raw[config.label_column].notna().all():
            test_labels = _label_values(test_raw[config.label_column], "test", config.label_column)
            if isinstance(names[0], str):
                test_labels = [str(v) for v in test_labels]
        test = _frame(test_raw, config, test_labels, names)
    return TextSplits(
        train=_frame(train_part, config, train_labels, names),
        validation=_frame(val_part, config, val_labels, names),
        test=test,
        label_names=names,
        notes=notes,
        folds=folds,
    )


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
