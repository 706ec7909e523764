"""`predict --backend ray`: Ray Data reads the input (a file, a folder or a glob of CSV / Parquet / JSON Lines
shards) and scores it on a pool of model replicas, each a Ray actor that loads the run once, on a local Ray or the
cluster at $RAY_ADDRESS. The output is the local path's, row for row: the files are read by the same reader
(`predict.read_chunks`: every CSV column as text, so an id like 007 stays 007 where Ray's own CSV reader would
infer a number), each chunk is scored by the same `Scoring`, and the driver writes the scored blocks in input order
into one file (so `--submission` works) through a temporary file renamed at the end. Every node needs lorabench,
and the run and the data at the same paths (shared storage)."""

from __future__ import annotations

import glob
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.core import console
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.settings import PredictBackend
from lorabench.core.storage import atomic_file
from lorabench.data.files import FORMATS, file_kind
from lorabench.models.registry import checked_run, load_classifier
from lorabench.workflows.cluster import ray_session
from lorabench.workflows.predict import READ_CHUNK_ROWS, Scoring, Tally, check_output, count_rows, read_chunks

# Columns the pipeline carries beside the user's, dropped before writing: the input row number (the `row` of an
# input without ids, and the order), the file's index (to name it), and whether the row's text was empty.
ROW, FILE, EMPTY = "__lorabench_row", "__lorabench_file", "__lorabench_empty"


def input_files(data: str | Path) -> list[Path]:
    """The data files `data` names: itself, the CSV / Parquet / JSON Lines files in a folder (hidden and `_`
    files, like Spark's _SUCCESS, left out), or the files a glob matches, in name order."""
    text = str(data)
    if Path(text).is_dir():
        files = sorted(path for path in Path(text).iterdir() if path.is_file() and path.suffix.lower() in FORMATS
                       and not path.name.startswith((".", "_")))  # fmt: skip
        if not files:
            raise LorabenchError(f"{text} holds no CSV, Parquet or JSON Lines files")
    elif any(char in text for char in "*?["):
        files = sorted(Path(path) for path in glob.glob(text) if Path(path).is_file())
        if not files:
            raise LorabenchError(f"no files match {text}")
    else:
        files = [Path(text)]
    for path in files:
        file_kind(path)  # each one a known format, named if not
    return files


def predict_on_ray(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    backend: PredictBackend,
    threshold: float | None = None,
    submission: bool = False,
    batch_size: int | None = None,
    probabilities: bool = False,
    chunk_rows: int = READ_CHUNK_ROWS,
    text_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    text_template: str | None = None,
) -> dict:
    """`predict_file`'s output and answer for `data` (a file, folder or glob), scored on `backend.replicas` Ray
    actors; the settings mean what they mean there."""
    import ray  # optional dependency (lorabench[ray])

    out, files = Path(out), input_files(data)
    check_output(out, files, submission, probabilities)
    sizes = [count_rows(path, file_kind(path)) for path in files]  # each file read once here: a broken one is named
    if sum(sizes) == 0:
        raise LorabenchError(f"{data} has no rows to predict")
    run = checked_run(run_dir)  # named here in one line, not in every replica
    summary = run.summary()  # its classes and threshold, without loading the model here
    given = {"text_column": text_column, "id_column": id_column, "label_column": label_column,
             "text_template": text_template}  # fmt: skip
    scoring = Scoring.build(run.path, given, threshold, summary, probabilities, submission)
    tally = Tally(scoring, summary.label_names)
    starts = [0, *itertools.accumulate(sizes)]  # each file's first row in the whole input
    pieces = [
        {"path": str(path.resolve()), "file": index, "first_row": starts[index]}
        for index, path in enumerate(files)
        if sizes[index]
    ]
    with ray_session(), _data_context(_block_bytes(files, scoring, chunk_rows)):
        read = ray.data.from_items(pieces).map_batches(
            _read_piece,
            fn_kwargs={"columns": scoring.read_columns, "chunk_rows": chunk_rows},
            batch_size=1,
            batch_format="pandas",
            num_cpus=0,  # parsing is light next to scoring, and the replicas may hold every CPU
            compute=ray.data.TaskPoolStrategy(size=min(backend.replicas, len(pieces))),
        )
        scored = read.map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "run_dir": str(run.path.resolve()),
                "batch_size": batch_size,
                "scoring": scoring,
                "sources": [path.name for path in files],
                "threads": backend.cpus_per_replica,
            },
            batch_size=chunk_rows if backend.gpus_per_replica else None,  # a block (~chunk_rows rows) per call
            batch_format="pandas",
            num_cpus=backend.cpus_per_replica,
            num_gpus=backend.gpus_per_replica,
            compute=ray.data.ActorPoolStrategy(size=backend.replicas),
        )
        console.say(f"scoring {sum(sizes)} rows of {len(files)} file(s) on {backend.replicas} Ray replicas")
        with atomic_file(out) as handle, console.progress_bar(f"predict {Path(str(data)).name}", sum(sizes)) as bar:
            for table in _named_failures(scored.iter_batches(batch_format="pandas", batch_size=None)):
                empty = int(table.pop(EMPTY).sum())
                tally.write(handle, table, out, empty)
                bar.advance(len(table))
    return tally.result(out)


def _block_bytes(files: list[Path], scoring: Scoring, chunk_rows: int) -> int:
    """Ray Data's block size for about `chunk_rows` rows of this input: a reading task's chunks are joined into
    blocks of this many bytes, and a block goes to one replica, so blocks of a whole file would leave the other
    replicas idle."""
    for path in files:
        for chunk in read_chunks(path, file_kind(path), scoring.read_columns, chunk_rows):
            if len(chunk):
                per_row = chunk.memory_usage(deep=True, index=False).sum() / len(chunk)
                return max(1, int(per_row * chunk_rows))
    return 1 << 20


@contextmanager
def _data_context(block_bytes: int) -> Iterator[None]:
    """Ray Data's settings for this prediction, restored afterwards: blocks kept in input order, of `block_bytes`,
    and lorabench's progress bar instead of Ray's."""
    import ray  # optional dependency (lorabench[ray])

    context = ray.data.DataContext.get_current()
    options = context.execution_options
    saved = (options.preserve_order, context.target_max_block_size, context.enable_progress_bars,
             context.raise_original_map_exception)  # fmt: skip
    options.preserve_order, context.target_max_block_size = True, block_bytes
    context.enable_progress_bars = False
    context.raise_original_map_exception = True  # a task's lorabench error reaches the driver as itself
    try:
        yield
    finally:
        options.preserve_order, context.target_max_block_size, context.enable_progress_bars = saved[:3]
        context.raise_original_map_exception = saved[3]


def _read_piece(batch: pd.DataFrame, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A reading task: one file's chunks, each with its input row numbers and the file's index."""
    for path, file, first_row in zip(batch["path"], batch["file"], batch["first_row"], strict=True):
        path = Path(path)
        row = int(first_row)
        for chunk in read_chunks(path, file_kind(path), columns, chunk_rows):
            chunk = chunk.reset_index(drop=True)
            chunk[ROW] = np.arange(row, row + len(chunk))
            chunk[FILE] = int(file)
            row += len(chunk)
            yield chunk


class _Scorer:
    """One model replica (a Ray actor): loads the run once, then scores block after block."""

    def __init__(self, run_dir: str, batch_size: int | None, scoring: Scoring, sources: list[str], threads: float):
        import torch  # the run's kind may score with it: its threads, the CPUs this replica asked for

        console.set_progress(False)  # replicas' bars would interleave; the driver shows one
        torch.set_num_threads(max(1, int(threads)))
        self.scoring, self.sources = scoring, sources
        try:
            self.classifier, self.failure = load_classifier(run_dir, batch_size), None
        except Exception as err:  # raised here, Ray would restart the replica forever: raised with the first block
            self.classifier, self.failure = None, err

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self.failure is not None:
            raise self.failure
        tables = []
        for file, part in batch.groupby(FILE, sort=False):
            source, first_row = self.sources[int(file)], int(part[ROW].iloc[0])
            try:
                table, empty = self.scoring.score(self.classifier, part.drop(columns=[ROW, FILE]), first_row, source)
            except LorabenchError:
                raise
            except Exception as err:  # the model's own failure, of any type: named with its file
                raise LorabenchError(f"scoring {source} failed: {first_line(err)}") from err
            tables.append(table.assign(**{EMPTY: empty}))
        return pd.concat(tables, ignore_index=True)


def _named_failures(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The batches; a failure in a Ray task that carries a lorabench error (naming its file) is raised as that
    one line, not as Ray's traceback of the task."""
    try:
        yield from batches
    except Exception as err:
        cause = _lorabench_cause(err)
        if cause is None:
            raise
        raise LorabenchError(first_line(cause)) from err  # Ray adds its retry advice below the line


def _lorabench_cause(err: BaseException | None, seen: int = 0) -> LorabenchError | None:
    """The first lorabench error in `err`'s chain: Ray wraps a task's error (`.cause`), Ray Data wraps Ray's."""
    while err is not None and seen < 20:
        if isinstance(err, LorabenchError) and not type(err).__module__.startswith("ray"):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
        seen += 1
    return None
