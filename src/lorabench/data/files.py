"""Reading the data: a hub data set, a directory of split files or one file (CSV / TSV, Parquet, JSONL), as one
raw frame per split, before any column is interpreted."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError, first_line

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


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
                    hint = delimiter_hint(header) if options["sep"] not in header else ""
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


def delimiter_hint(header: str) -> str:
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
