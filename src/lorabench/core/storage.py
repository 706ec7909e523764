"""The run record on disk: config, per-epoch metrics, best adapter, resume checkpoint and summary.

Every file is written to a temporary name and renamed, so a kill never leaves a truncated file behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
from pydantic import BaseModel
from safetensors.numpy import load_file, save

from lorabench.core.config import RunConfig, config_to_yaml, read_config_file, validate, validate_as
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import InferenceCost, RunSummary

Record = TypeVar("Record", bound=BaseModel)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
COST_FILE = "cost.json"  # what using the finished run costs (lorabench.workflows.cost)
MANIFEST_FILE = "compare.json"  # a comparison's record (lorabench.workflows.compare)
CHECKPOINT_DIR = "checkpoint"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A handle on a temporary file in the target's folder, renamed to `path` on success and removed on any
    failure, so a reader never sees a truncated file. Permissions follow the umask like a plain `open`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, content: str | bytes) -> None:
    with atomic_file(path, binary=isinstance(content, bytes)) as handle:
        handle.write(content)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_record(path: Path, record: BaseModel) -> None:
    write_atomic(path, record.model_dump_json(indent=2) + "\n")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Numpy arrays as one safetensors file, each made C-contiguous first.

    `safetensors.numpy.save_file` writes an array's raw buffer without its strides and raises nothing, so a
    Fortran-ordered or sliced array (scikit-learn's multi-class `coef_`) would reload as a different matrix: a
    model that answers confidently and wrongly. Every saved array passes through here, whatever the kind."""
    write_atomic(path, save({name: np.ascontiguousarray(array) for name, array in arrays.items()}))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a file `save_arrays` wrote."""
    return load_file(str(path))


def read_json(path: Path) -> Any:
    """A JSON file's content, or one line saying why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LorabenchError(f"cannot read {path}: {first_line(err)}") from err


def read_record(path: Path, schema: type[Record], what: str) -> Record:
    """A record file checked against its schema; a missing or wrong field is named in one line."""
    return validate_as(schema, read_json(path), what, str(path))


def safe_dir_name(name: str) -> str:
    """A model name as one safe directory name: 'FacebookAI/roberta-large' -> 'FacebookAI--roberta-large'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "model"


@contextmanager
def restored_on_failure(path: Path) -> Iterator[None]:
    """Leave `path` as the command found it when the command fails: a directory it created is removed and an empty
    one emptied again; one that already held a run keeps it (records are written atomically and `--resume`
    continues from the last checkpoint). An interrupt (Ctrl-C) or a kill is not a failure: what was trained so
    far stays, for `--resume`."""
    existed = path.exists()
    was_empty = path.is_dir() and not any(path.iterdir())
    try:
        yield
    except Exception:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        elif was_empty:
            for entry in path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        raise


def replace_dir(build: Callable[[Path], None], target: Path) -> None:
    """Fill a fresh temporary directory with `build(tmp_dir)`, then swap it in for `target`."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        build(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dirs(parent: Path) -> None:
    """Undo what a kill inside `replace_dir` leaves in `parent`: put back an old copy whose new one never
    arrived, and delete half-built temporary copies and the temporary files of `write_atomic`."""
    for old in parent.glob(".*.old"):
        target = parent / old.name[1 : -len(".old")]
        if old.is_dir() and not target.exists():
            os.replace(old, target)
    for leftover in parent.glob(".*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


class RunDir:
    """One training run's directory; refuses to mix two different runs in one place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self, config: RunConfig, resume: bool) -> bool:
        """Refuse an output path that holds anything but this run (before slow loading; writes nothing).

        Returns True when the directory holds this run with a checkpoint to resume from.
        """
        if self.path.exists() and not self.path.is_dir():
            raise LorabenchError(f"output path exists and is not a directory: {self.path}")
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return False
        if not self.file(CONFIG_FILE).is_file():
            raise LorabenchError(
                f"output directory {self.path} is not empty and holds no lorabench run; choose another --out"
            )
        try:
            same = self.config() == config
        except LorabenchError:
            same = False
        if not same:
            raise LorabenchError(f"output directory {self.path} already holds a different run; choose another --out")
        if not resume:
            raise LorabenchError(
                f"output directory {self.path} already holds this run; pass --resume to continue it or choose another --out"
            )
        return any(self.file(name).is_dir() for name in (CHECKPOINT_DIR, f".{CHECKPOINT_DIR}.old"))

    def prepare(self, config: RunConfig, resume: bool) -> bool:
        """Create the directory, or check it holds this same run; returns True when a checkpoint can resume."""
        can_resume = self.check(config, resume)
        if self.file(CONFIG_FILE).is_file():
            recover_dirs(self.path)
            return can_resume
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file(CONFIG_FILE), config_to_yaml(config))
        return False

    def append_metrics(self, row: dict) -> None:
        """Rewrite metrics.jsonl with one more line (atomic; the file stays small: one line per epoch)."""
        rows = self.metrics()
        rows = [r for r in rows if r.get("epoch") != row.get("epoch")] + [row]
        write_atomic(self.file(METRICS_FILE), "".join(json.dumps(r) + "\n" for r in rows))

    def metrics(self) -> list[dict]:
        path = self.file(METRICS_FILE)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def summary(self) -> RunSummary:
        path = self.file(SUMMARY_FILE)
        if not path.is_file():
            raise LorabenchError(f"{self.path} holds no finished run (no {SUMMARY_FILE})")
        return read_record(path, RunSummary, "run summary")

    def write_summary(self, summary: RunSummary) -> None:
        write_record(self.file(SUMMARY_FILE), summary)

    def cost(self) -> InferenceCost | None:
        """The run's measured inference cost; None when it was never measured."""
        path = self.file(COST_FILE)
        return read_record(path, InferenceCost, "inference cost record") if path.is_file() else None

    def config(self) -> RunConfig:
        return validate(read_config_file(self.file(CONFIG_FILE)))
