"""Stage 7: score new texts with a finished run - a file of any size, streamed in chunks, or a list in memory.

`load_classifier(run_dir)` rebuilds the run's model (base + LoRA adapter + head) for LoRA runs, or hands over to
`lorabench.baseline.TfidfClassifier` for TF-IDF runs; both answer `predict_proba(texts) -> (n, k)` and carry
`label_names` and `threshold` (the validation-F1 threshold that `train` recorded, two classes only).
torch and the model stack are imported only when a LoRA model is loaded, so `lorabench.api` stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench import record, ui
from lorabench.data import FORMATS, _require_column
from lorabench.errors import LorabenchError

READ_CHUNK_ROWS = 2048
OUTPUT_FORMATS = (".csv", ".jsonl")


class LoraClassifier:
    """A LoRA run's base model with its adapter and head, and the tokenizer saved beside the adapter."""

    def __init__(self, run_dir: str | Path, batch_size: int | None = None):
        from peft import PeftModel

        from lorabench.model import load_base_model, resolve_source
        from lorabench.tokenization import load_tokenizer
        from lorabench.train import autocast_dtype, choose_device

        ui.quiet_libraries()
        run = record.RunDir(run_dir)
        self.config = run.config()
        summary = run.summary()
        adapter_dir = run.file(record.ADAPTER_DIR)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise LorabenchError(f"{run.path} has no trained adapter ({record.ADAPTER_DIR}/adapter_config.json)")
        self.label_names: list = list(summary["label_names"])
        self.threshold: float | None = summary.get("threshold")
        settings = self.config.train
        self.batch_size = batch_size or settings.eval_batch_size
        self.max_length = settings.max_length
        self.tokenizer = load_tokenizer(str(adapter_dir), trust_remote_code=self.config.model.trust_remote_code)
        base = load_base_model(
            resolve_source(self.config.model),
            self.config.model,
            len(self.label_names),
            self.label_names,
            self.tokenizer.pad_token_id,
        )
        self.device = choose_device()
        # A run trained in fp16 on a GPU is still usable on a CPU, in fp32.
        fp16_on_cpu = settings.precision == "fp16" and self.device.type != "cuda"
        self.autocast = None if fp16_on_cpu else autocast_dtype(settings.precision, self.device)
        try:
            self.model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).to(self.device)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise LorabenchError(
                f"cannot load the adapter in {adapter_dir}: {str(err).strip().splitlines()[0]}"
            ) from None
        self.model.eval()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (n, k), tokenized and batched exactly as `train` scores its splits."""
        from lorabench.evaluate import predict_proba
        from lorabench.tokenization import encode

        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        encoded = encode(self.tokenizer, texts, np.full(len(texts), -1), self.max_length, "predict")
        # A decoder tokenizer without BOS turns "" into no tokens at all; score it as a lone pad (= eos) token.
        encoded.input_ids = [ids or [self.tokenizer.pad_token_id] for ids in encoded.input_ids]
        return predict_proba(
            self.model,
            encoded,
            self.batch_size,
            self.device,
            self.autocast,
            self.tokenizer.pad_token_id,
            self.tokenizer.padding_side,
            "predict",
        )


def load_classifier(run_dir: str | Path, batch_size: int | None = None):
    """The classifier of a finished run: LoRA runs here, TF-IDF runs through `lorabench.baseline`."""
    run = record.RunDir(run_dir)
    if not run.path.is_dir():
        raise LorabenchError(f"run directory not found: {run.path}")
    if not run.file(record.CONFIG_FILE).is_file():
        raise LorabenchError(f"{run.path} is not a lorabench run (no {record.CONFIG_FILE})")
    run.summary()  # refuses an unfinished run with a clear message
    if run_model_name(run.path) == "tfidf":
        try:
            from lorabench.baseline import TfidfClassifier
        except ImportError:
            raise LorabenchError(f"{run.path} is a TF-IDF run, but this lorabench has no TF-IDF baseline") from None
        return TfidfClassifier.load(run.path)
    return LoraClassifier(run.path, batch_size)


def run_model_name(run_dir: str | Path) -> str:
    """The run's model name, read from the raw config so that runs with their own config sections are recognised."""
    from lorabench.config import read_config_file

    model = read_config_file(Path(run_dir) / record.CONFIG_FILE).get("model")
    return str(model.get("name", "")) if isinstance(model, dict) else ""


def decide(probabilities: np.ndarray, label_names: list, threshold: float | None) -> tuple[list, np.ndarray]:
    """Label names and scores: P(positive) for two classes (the threshold applies to it), else P(predicted class)."""
    from lorabench.evaluate import predicted_labels

    ids = predicted_labels(probabilities, threshold)
    scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities[np.arange(len(ids)), ids]
    return [label_names[i] for i in ids], scores


def check_threshold(threshold: float | None, label_names: list) -> None:
    if threshold is None:
        return
    if len(label_names) != 2:
        raise LorabenchError(f"--threshold applies to two-class runs; this run has {len(label_names)} classes")
    if not 0.0 <= threshold <= 1.0:
        raise LorabenchError(f"--threshold must lie between 0 and 1, not {threshold}")


def predict_file(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    threshold: float | None = None,
    submission: bool = False,
    text_column: str = "text",
    id_column: str = "id",
    batch_size: int | None = None,
    chunk_rows: int = READ_CHUNK_ROWS,
    classifier=None,
) -> dict:
    """Score every row of `data` into `out` (CSV or JSON Lines) chunk by chunk; memory does not grow with the file.

    The output keeps the id column and adds `target` (label name) and `score`; with `submission` it is exactly
    Kaggle's `id,target`. It is written to a temporary file and renamed at the end, so a failure leaves nothing.
    """
    data, out = Path(data), Path(out)
    kind = _input_kind(data)
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
    check_threshold(threshold, classifier.label_names)
    threshold = classifier.threshold if threshold is None else threshold

    counts = {str(name): 0 for name in classifier.label_names}
    rows = empty = 0
    with record.atomic_file(out) as handle, ui.progress_bar(f"predict {data.name}", total) as bar:
        for chunk in _read_chunks(data, kind, [id_column, text_column], chunk_rows):
            _require_column(chunk, text_column, "text", data.name)
            if submission and id_column not in chunk.columns:
                raise LorabenchError(f"--submission needs an id column '{id_column}' in {data.name} (see --id-column)")
            texts = chunk[text_column].fillna("").astype(str)
            with ui.progress_hidden():
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
        ui.say(f"note: {empty} rows had an empty or missing text; they were scored as empty texts")
    return {"rows": rows, "out": str(out), "threshold": threshold, "label_counts": counts, "empty_texts": empty}


def _input_kind(path: Path) -> str:
    if not path.is_file():
        raise LorabenchError(f"data file not found: {path}" if not path.exists() else f"not a file: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise LorabenchError(
            f"unknown data format '{path.suffix or path.name}' for {path}; use CSV, Parquet or JSON Lines"
        )
    return kind


def _count_rows(path: Path, kind: str) -> int:
    """Rows in the file, for the progress bar: Parquet's metadata, else one cheap streaming pass."""
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if kind == "jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        return sum(len(chunk) for chunk in _csv_reader(path, READ_CHUNK_ROWS * 8, usecols=[0]))
    except LorabenchError:
        raise
    except Exception as err:  # pandas / pyarrow parse errors of many types
        raise LorabenchError(f"cannot read {path} as {kind}: {str(err).strip().splitlines()[0]}") from None


def _csv_reader(path: Path, chunk_rows: int, usecols=None):
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    # Same reading rules as data.read_table: every column as text, only empty cells missing.
    return pd.read_csv(
        path,
        sep=sep,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8-sig",
        chunksize=chunk_rows,
        usecols=usecols,
    )


def _read_chunks(path: Path, kind: str, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Frames of at most `chunk_rows` rows holding those of `columns` the file has (pandas / pyarrow streaming)."""
    wanted = set(columns)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

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
    except UnicodeDecodeError:
        raise LorabenchError(f"{path} is not UTF-8; re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    except Exception as err:  # pandas / pyarrow parse errors of many types
        raise LorabenchError(f"cannot read {path} as {kind}: {str(err).strip().splitlines()[0]}") from None


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
