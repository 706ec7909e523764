"""Stage 7: score new texts with a finished run - a file of any size, streamed in chunks.

The run's classifier, of whatever kind (lorabench.models.registry), answers `predict_proba(texts) -> (n, k)` and
carries `label_names` and `threshold` (the validation-F1 threshold that `train` recorded, two classes only).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lorabench.core import console
from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.metrics import check_threshold, decide, probability_columns
from lorabench.core.storage import RunDir, atomic_file
from lorabench.data.files import csv_options, file_kind
from lorabench.data.texts import require_column, template_columns, template_texts
from lorabench.models.registry import Classifier, load_classifier

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
    check_output(out, [data], submission, probabilities)
    total = count_rows(data, kind)
    if total == 0:
        raise LorabenchError(f"{data} has no rows to predict")
    classifier = classifier or load_classifier(run_dir, batch_size)
    given = {"text_column": text_column, "id_column": id_column, "label_column": label_column,
             "text_template": text_template}  # fmt: skip
    scoring = Scoring.build(run_dir, given, threshold, classifier, probabilities, submission)
    tally = Tally(scoring, classifier.label_names)
    with atomic_file(out) as handle, console.progress_bar(f"predict {data.name}", total) as bar:
        for chunk in read_chunks(data, kind, scoring.read_columns, chunk_rows):
            with console.progress_hidden():
                table, empty = scoring.score(classifier, chunk, tally.rows, data.name)
            tally.write(handle, table, out, int(empty.sum()))
            bar.advance(len(chunk))
    return tally.result(out)


def check_output(out: Path, inputs: list[Path], submission: bool, probabilities: bool) -> None:
    """Refuse, before anything is read, an output `predict` cannot write: its format, Kaggle's, or an input's path."""
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise LorabenchError(f"--out must end in .csv or .jsonl, not '{out.suffix or out.name}'")
    if submission and out.suffix.lower() != ".csv":
        raise LorabenchError("a Kaggle submission (--submission) is a CSV file; give --out a .csv name")
    if submission and probabilities:
        raise LorabenchError("--submission writes exactly Kaggle's id,target; leave out --probabilities")
    if any(out.resolve() == path.resolve() for path in inputs):
        raise LorabenchError("--out must differ from --data (the input would be overwritten)")


@dataclass(frozen=True)
class Scoring:
    """How every chunk is scored and laid out, whichever path reads it (this process, or Ray's replicas: it is
    picklable, so they score by this same code)."""

    columns: DataConfig
    threshold: float | None
    probabilities: bool
    submission: bool

    @classmethod
    def build(cls, run_dir, given: dict, threshold: float | None, classifier, probabilities: bool,
              submission: bool) -> Scoring:  # fmt: skip
        """The run's columns (each given one in its place) and threshold (`classifier` answers `label_names` and
        `threshold`: a loaded classifier, or the run's summary)."""
        check_threshold(threshold, classifier.label_names)
        threshold = classifier.threshold if threshold is None else threshold
        return cls(_columns(run_dir, given), threshold, probabilities, submission)

    @property
    def read_columns(self) -> list[str]:
        """The input columns the output is built from: the id and the texts (the template's columns, if any)."""
        template = self.columns.text_template
        return [self.columns.id_column, *(template_columns(template) if template else [self.columns.text_column])]

    @property
    def label_column(self) -> str:
        return "target" if self.submission else self.columns.label_column

    def score(self, classifier: Classifier, chunk: pd.DataFrame, first_row: int, source: str):
        """(the output table, which rows had an empty text) for one chunk of `source` whose first row is the
        input's `first_row` (the `row` column of an input without ids)."""
        columns = self.columns
        if self.submission and columns.id_column not in chunk.columns:
            raise LorabenchError(f"--submission needs an id column '{columns.id_column}' in {source} (see --id-column)")
        texts = _chunk_texts(chunk, columns.text_template, columns.text_column, source)
        scored = classifier.predict_proba(texts.tolist())
        labels, scores = decide(scored, classifier.label_names, self.threshold)
        extra = probability_columns(scored, classifier.label_names) if self.probabilities else {}
        table = _output_table(chunk, columns, first_row, labels, scores, extra, self.submission)
        return table, (texts.str.strip() == "").to_numpy()


class Tally:
    """The output written chunk after chunk, and the counts `predict` reports."""

    def __init__(self, scoring: Scoring, label_names: list):
        self.scoring = scoring
        self.counts = {str(name): 0 for name in label_names}
        self.rows = self.empty = 0

    def write(self, handle, table: pd.DataFrame, out: Path, empty: int) -> None:
        _write_chunk(handle, table, out.suffix.lower(), first=self.rows == 0)
        for label in table[self.scoring.label_column]:
            self.counts[str(label)] += 1
        self.rows += len(table)
        self.empty += empty

    def result(self, out: Path) -> dict:
        if self.empty:
            console.say(f"note: {self.empty} rows had an empty or missing text; they were scored as empty texts")
        return {"rows": self.rows, "out": str(out), "threshold": self.scoring.threshold, "label_counts": self.counts,
                "empty_texts": self.empty}  # fmt: skip


def _chunk_texts(chunk: pd.DataFrame, template: str | None, text_column: str, source: str) -> pd.Series:
    """The texts to score: built by the run's template, else the text column's (missing ones empty)."""
    if template:
        return template_texts(chunk, template, source)
    require_column(chunk, text_column, "text", source)
    return chunk[text_column].fillna("").astype(str)


def count_rows(path: Path, kind: str) -> int:
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


def read_chunks(path: Path, kind: str, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
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
