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
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.metrics import check_threshold, decide
from lorabench.core.storage import RunDir, atomic_file
from lorabench.data.sources import csv_options, file_kind, require_column, template_columns, template_texts
from lorabench.models.registry import Classifier, load_classifier

READ_CHUNK_ROWS = 2048
OUTPUT_FORMATS = (".csv", ".jsonl")


def predict_file(
    run_dir: str | Path | None,
    data: str | Path,
    out: str | Path,
    threshold: float | None = None,
    submission: bool = False,
    text_column: str = "text",
    id_column: str = "id",
    batch_size: int | None = None,
    chunk_rows: int = READ_CHUNK_ROWS,
    classifier: Classifier | None = None,
) -> dict:
    """Score every row of `data` into `out` (CSV or JSON Lines) chunk by chunk; memory does not grow with the file.

    The output keeps the id column and adds `target` (label name) and `score`; with `submission` it is exactly
    Kaggle's `id,target`. It is written to a temporary file and renamed at the end, so a failure leaves nothing.
    A run trained with `data.text_template` builds each text from the same columns the same way (`text_column`
    then does not apply).
    """
    data, out = Path(data), Path(out)
    kind = file_kind(data)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise LorabenchError(f"--out must end in .csv or .jsonl, not '{out.suffix or out.name}'")
    if submission and out.suffix.lower() != ".csv":
        raise LorabenchError("a Kaggle submission (--submission) is a CSV file; give --out a .csv name")
    if out.resolve() == data.resolve():
        raise LorabenchError("--out must differ from --data (the input would be overwritten)")
    total = _count_rows(data, kind)
    if total == 0:
        raise LorabenchError(f"{data} has no rows to predict")
    classifier = classifier or load_classifier(run_dir, batch_size)
    template = RunDir(run_dir).config().data.text_template if run_dir is not None else None  # None: a bare classifier
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
                probabilities = classifier.predict_proba(texts.tolist())
            labels, scores = decide(probabilities, classifier.label_names, threshold)
            table = _output_table(chunk, id_column, rows, labels, scores, submission)
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
    """The file in chunks, read by the same rules as whole training files (data.sources.csv_options)."""
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


def _output_table(
    chunk: pd.DataFrame, id_column: str, first_row: int, labels: list, scores: np.ndarray, submission: bool
) -> pd.DataFrame:
    if submission:
        return pd.DataFrame({"id": chunk[id_column].to_numpy(), "target": labels})
    if id_column in chunk.columns:
        table = pd.DataFrame({id_column: chunk[id_column].to_numpy()})
    else:
        table = pd.DataFrame({"row": np.arange(first_row, first_row + len(chunk))})  # to join back to the input
    table["target"] = labels
    table["score"] = np.round(scores.astype(np.float64), 6)
    return table


def _write_chunk(handle, table: pd.DataFrame, suffix: str, first: bool) -> None:
    if suffix == ".csv":
        table.to_csv(handle, header=first, index=False)
    else:
        lines = table.to_json(orient="records", lines=True, force_ascii=False)
        handle.write(lines if lines.endswith("\n") else lines + "\n")
