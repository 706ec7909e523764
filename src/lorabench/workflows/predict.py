"""Stage 7: score new texts with a finished run - a file of any size, streamed in chunks.

The run's classifier, of whatever kind (lorabench.models.registry), answers `predict_proba(texts) -> (n, k)` and
carries `label_names` and `threshold` (the validation-F1 threshold that `train` recorded, two classes only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lorabench.core import console
from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.metrics import check_threshold, decide
from lorabench.core.storage import RunDir, atomic_file
from lorabench.data.files import csv_options, file_kind
from lorabench.data.texts import require_column, template_columns, template_texts
from lorabench.models.registry import Classifier, load_classifier
from lorabench.training.records import probability_columns

READ_CHUNK_ROWS = 2048
OUTPUT_FORMATS = (".csv", ".jsonl")


def predict_file(
    run_dir: str | Path | None,
    data: str | Path,
    out: str | Path,
    threshold: float | None = None,
    submission: bool = False,
    text_column: str | None = None,
    id_column: str | None = None,
    batch_size: int | None = None,
    label_column: str | None = None,
    text_template: str | None = None,
    probabilities: bool = False,
    chunk_rows: int = READ_CHUNK_ROWS,
    classifier: Classifier | None = None,
) -> dict:
    """Score every row of `data` into `out` (CSV or JSON Lines) chunk by chunk; memory does not grow with the file.

    The columns are the run's (its config's `data`; a bare `classifier` has DataConfig's defaults) unless given
    here. The output keeps the id column and adds the label column (the predicted class name), `score` and with
    `probabilities` one `prob_<class>` column per class, as the run's own predictions files have them; with
    `submission` it is exactly Kaggle's `id,target`. It is written to a temporary file and renamed at the end, so a
    failure leaves nothing. With a text template (the run's or given) each text is built from the same columns the
    same way as in training, and `text_column` does not apply.
    """
    data, out = Path(data), Path(out)
    kind = file_kind(data)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise LorabenchError(f"--out must end in .csv or .jsonl, not '{out.suffix or out.name}'")
    if submission and out.suffix.lower() != ".csv":
        raise LorabenchError("a Kaggle submission (--submission) is a CSV file; give --out a .csv name")
    if submission and probabilities:
        raise LorabenchError("--submission writes exactly Kaggle's id,target; leave out --probabilities")
    if out.resolve() == data.resolve():
        raise LorabenchError("--out must differ from --data (the input would be overwritten)")
    total = _count_rows(data, kind)
    if total == 0:
        raise LorabenchError(f"{data} has no rows to predict")
    classifier = classifier or load_classifier(run_dir, batch_size)
    given = {"text_column": text_column, "id_column": id_column, "label_column": label_column,
             "text_template": text_template}  # fmt: skip
    columns = _columns(run_dir, given)
    template, text_column, id_column = columns.text_template, columns.text_column, columns.id_column
    text_columns = template_columns(template) if template else [text_column]
    check_threshold(threshold, classifier.label_names)
    threshold = classifier.threshold if threshold is None else threshold

    counts = {str(name): 0 for name in classifier.label_names}
    rows = empty = 0
    with atomic_file(out) as handle, console.progress_bar(f"predict {data.name}", total) as bar:
        for chunk in _read_chunks(data, kind, [id_column, *text_columns], chunk_rows):
            if submission and id_column not in chunk.columns:
                raise LorabenchError(f"--submission needs an id column '{id_column}' in {data.name} (see --id-column)")
            texts = _chunk_texts(chunk, template, text_column, data.name)
            with console.progress_hidden():
                scored = classifier.predict_proba(texts.tolist())
            labels, scores = decide(scored, classifier.label_names, threshold)
            extra = probability_columns(scored, classifier.label_names) if probabilities else {}
            table = _output_table(chunk, columns, rows, labels, scores, extra, submission)
            _write_chunk(handle, table, out.suffix.lower(), first=rows == 0)
            for label in labels:
                counts[str(label)] += 1
            rows += len(chunk)
            empty += int((texts.str.strip() == "").sum())
            bar.advance(len(chunk))
    if empty:
        console.say(f"note: {empty} rows had an empty or missing text; they were scored as empty texts")
    return {"rows": rows, "out": str(out), "threshold": threshold, "label_counts": counts, "empty_texts": empty}


def _chunk_texts(chunk: pd.DataFrame, template: str | None, text_column: str, source: str) -> pd.Series:
    """The texts to score: built by the run's template, else the text column's (missing ones empty)."""
    if template:
        return template_texts(chunk, template, source)
    require_column(chunk, text_column, "text", source)
    return chunk[text_column].fillna("").astype(str)


def _count_rows(path: Path, kind: str) -> int:
    """Rows in the file, for the progress bar: Parquet's metadata, else one cheap streaming pass."""
    try:
        if kind == "parquet":
            return pq.ParquetFile(path).metadata.num_rows
        if kind == "jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        return sum(len(chunk) for chunk in _csv_reader(path, READ_CHUNK_ROWS * 8, usecols=[0]))
    except LorabenchError:
        raise
    except Exception as err:  # pandas / pyarrow parse errors of many types
        raise LorabenchError(f"cannot read {path} as {kind}: {first_line(err)}") from err


def _csv_reader(path: Path, chunk_rows: int, usecols=None):
    """The file in chunks, read by the same rules as whole training files (data.files.csv_options)."""
    return pd.read_csv(path, encoding="utf-8-sig", chunksize=chunk_rows, usecols=usecols, **csv_options(path))


def _read_chunks(path: Path, kind: str, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Frames of at most `chunk_rows` rows holding those of `columns` the file has (pandas / pyarrow streaming)."""
    wanted = set(columns)
    try:
        if kind == "parquet":
            parquet = pq.ParquetFile(path)
            present = [name for name in parquet.schema_arrow.names if name in wanted]
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=present):
                yield batch.to_pandas()
        elif kind == "jsonl":
            with pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False, encoding="utf-8") as reader:
                for chunk in reader:
                    yield chunk[[name for name in chunk.columns if name in wanted]]
        else:
            with _csv_reader(path, chunk_rows, usecols=lambda name: name in wanted) as reader:
                yield from reader
    except LorabenchError:
        raise
    except UnicodeDecodeError as err:
        raise LorabenchError(f"{path} is not UTF-8; re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from err
    except Exception as err:  # pandas / pyarrow parse errors of many types
        raise LorabenchError(f"cannot read {path} as {kind}: {first_line(err)}") from err


def _columns(run_dir: str | Path | None, given: dict[str, str | None]) -> DataConfig:
    """The run's column settings (DataConfig's defaults for a bare classifier), each given one in its place."""
    run_data = RunDir(run_dir).config().data if run_dir is not None else DataConfig()
    return run_data.model_copy(update={key: value for key, value in given.items() if value is not None})


def _output_table(
    chunk: pd.DataFrame,
    columns: DataConfig,
    first_row: int,
    labels: list,
    scores: np.ndarray,
    probabilities: dict[str, np.ndarray],
    submission: bool,
) -> pd.DataFrame:
    if submission:
        return pd.DataFrame({"id": chunk[columns.id_column].to_numpy(), "target": labels})
    if columns.id_column in chunk.columns:
        key = (columns.id_column, chunk[columns.id_column].to_numpy())
    else:
        key = ("row", np.arange(first_row, first_row + len(chunk)))  # to join back to the input
    output = [key, (columns.label_column, labels), ("score", np.round(scores.astype(np.float64), 6)),
              *probabilities.items()]  # fmt: skip
    names = [name for name, _ in output]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise LorabenchError(
            f"the output would have two columns named '{repeated[0]}' (id, label, score, prob_<class>); "
            "give --id-column or --label-column another name"
        )
    return pd.DataFrame(dict(output))


def _write_chunk(handle, table: pd.DataFrame, suffix: str, first: bool) -> None:
    if suffix == ".csv":
        table.to_csv(handle, header=first, index=False)
    else:
        lines = table.to_json(orient="records", lines=True, force_ascii=False)
        handle.write(lines if lines.endswith("\n") else lines + "\n")
