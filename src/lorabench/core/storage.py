"""The run record on disk: config, per-epoch metrics, best adapter, resume checkpoint and summary.

Every file is written to a temporary name and renamed, so a kill never leaves a truncated file behind; a full disk
stops the command in one line (DiskFull) with the previous file whole; and a directory being written is locked
(`writing`), so a second command writing the same place is refused instead of mixing its files in.
"""

from __future__ import annotations

import errno
import fcntl
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
from lorabench.core.console import say
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import InferenceCost, RunSummary

Record = TypeVar("Record", bound=BaseModel)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
COST_FILE = "cost.json"  # what using the finished run costs (lorabench.workflows.cost)
MANIFEST_FILE = "compare.json"  # a comparison's record (lorabench.workflows.compare)
CHECKPOINT_DIR = "checkpoint"
# Where the trackers write inside a run directory: logs of the training run, not part of its model.
TRACKER_DIRS = {"wandb": "wandb", "mlflow": "mlruns", "tensorboard": "tensorboard"}
LOCK_FILE = ".lorabench.lock"  # inside a directory being written (`writing`); never part of its record
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(LorabenchError):
    """The disk (or the quota) filled up during a write. Not a failure of the work: what was written before stays,
    so `--resume` continues once space is freed."""


@contextmanager
def space_checked(directory: Path, need: int | None = None) -> Iterator[None]:
    """Turn a full disk or quota inside the block into one DiskFull line naming `directory` (and `need` bytes).
    Writers in other languages (safetensors' Rust, torch's C++) raise their own types, with the system's words."""
    try:
        yield
    except LorabenchError:
        raise
    except Exception as err:
        reasons = [os.strerror(code) for code in NO_SPACE]
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            reason = err.strerror or reasons[NO_SPACE.index(err.errno)]
        else:
            reason = next((text for text in reasons if text in str(err)), None)
        if reason is None:
            raise
        size = "" if not need else f" (writing {need / 1e6:.1f} MB)" if need >= 1e6 else f" (writing {need:,} bytes)"
        # the directory the user knows, not a temporary copy `replace_dir` was building in it
        directory = next(folder for folder in (directory, *directory.parents) if not folder.name.startswith("."))
        raise DiskFull(
            f"cannot write in {directory}: {reason}{size}; free some space and run the same command again (train: "
            "with --resume, from its last checkpoint)"
        ) from err


def contents(path: Path) -> list[Path]:
    """What a directory holds, less the lock of the process writing it."""
    return [entry for entry in path.iterdir() if entry.name != LOCK_FILE] if path.is_dir() else []


def _acquire(lock: Path) -> int:
    """The descriptor of `lock`, flocked and holding this process's pid; LorabenchError naming the holder when another
    process has it. A lock file its holder removed while this one opened it is opened again."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise LorabenchError(
                f"{lock.parent} is being written by {f'process {holder}' if holder else 'another process'}; wait for "
                "it to finish or choose another --out"
            ) from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Hold `path`'s write lock while the block runs (the directory and its missing parents are created if needed,
    and removed again if they are left empty). An flock, so a killed holder never leaves a stale lock; fcntl rather than filelock because the
    refusal names the holder's pid, and filelock truncates the lock file on every attempt."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LorabenchError(f"output path exists and is not a directory: {path}")
    # the directory and the parents this creates, innermost first: each is removed again if it is left empty
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    lock = path / LOCK_FILE
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock)
    except OSError as err:  # a read-only or full place
        raise LorabenchError(f"cannot write in {path}: {err.strerror or first_line(err)}") from err
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the unlock: a process waiting on this file then opens a new one
        os.close(fd)
        for folder in created:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path, binary: bool = False, need: int | None = None) -> Iterator[IO[Any]]:
    """A handle on a temporary file in the target's folder, renamed to `path` on success and removed on any
    failure, so a reader never sees a truncated file. Permissions follow the umask like a plain `open`; a full disk
    is one DiskFull line (`need`: the bytes to write, when known)."""
    with space_checked(path.parent, need):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with space_checked(path.parent, need):
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
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    with atomic_file(path, binary=True, need=len(data)) as handle:
        handle.write(data)


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


def read_json(path: Path, remedy: str = "") -> Any:
    """A JSON file's content, or one line saying why it cannot be read: an empty or cut file (a copy that stopped
    short, a disk that filled up before atomic writes) is named as such, with `remedy` (what to do), not with the
    parser's message."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LorabenchError(f"cannot read {path}: {first_line(err)}") from err
    try:
        return json.loads(text)
    except ValueError as err:
        damage = "is empty" if not text.strip() else "is cut short or damaged (not valid JSON)"
        raise LorabenchError(f"{path} {damage}" + (f"; {remedy}" if remedy else "")) from err


def read_record(path: Path, schema: type[Record], what: str, remedy: str = "") -> Record:
    """A record file checked against its schema; a missing or wrong field is named in one line."""
    return validate_as(schema, read_json(path, remedy), what, str(path))


def safe_dir_name(name: str) -> str:
    """A model name as one safe directory name: 'FacebookAI/roberta-large' -> 'FacebookAI--roberta-large'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "model"


@contextmanager
def restored_on_failure(path: Path) -> Iterator[None]:
    """Leave `path` as the command found it when the command fails: a directory it created is removed and an empty
    one emptied again; one that already held a run keeps it (records are written atomically and `--resume`
    continues from the last checkpoint). An interrupt (Ctrl-C, SIGTERM), a kill or a full disk is not a failure:
    what was trained so far stays, for `--resume`."""
    existed = path.exists()
    was_empty = path.is_dir() and not contents(path)
    try:
        yield
    except DiskFull:  # like an interrupt: what was written stays, for --resume once space is freed
        raise
    except Exception:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        elif was_empty:
            for entry in contents(path):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        raise


def replace_dir(build: Callable[[Path], None], target: Path) -> None:
    """Fill a fresh temporary directory with `build(tmp_dir)`, then swap it in for `target`; a full disk is one
    DiskFull line, with `target` as it was."""
    with space_checked(target.parent):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with space_checked(target.parent):
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
        if leftover.name == LOCK_FILE:
            continue
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
        if not contents(self.path):
            return False
        if not self.file(CONFIG_FILE).is_file():
            raise LorabenchError(
                f"output directory {self.path} is not empty and holds no lorabench run; choose another --out"
            )
        recorded = self._config_mapping()  # a damaged config.yaml is named as such, not as another run
        try:
            same = validate(recorded) == config
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
        """The per-epoch rows. A cut last line (a copy or a disk that stopped short) is dropped with a note: the
        epoch is trained again on resume; a damaged line before it is refused, by number."""
        path = self.file(METRICS_FILE)
        if not path.is_file():
            return []
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if number < len(lines):
                    raise LorabenchError(
                        f"{path} line {number} is damaged (not JSON); train into a new --out"
                    ) from None
                say(f"note: the last line of {path} is cut short; dropped (its epoch is trained again)")
        return rows

    def summary(self) -> RunSummary:
        path = self.file(SUMMARY_FILE)
        if not path.is_file():
            raise LorabenchError(f"{self.path} holds no finished run (no {SUMMARY_FILE})")
        remedy = f"run `lorabench train --resume --out {self.path}` to write it again"
        return read_record(path, RunSummary, "run summary", remedy)

    def write_summary(self, summary: RunSummary) -> None:
        write_record(self.file(SUMMARY_FILE), summary)

    def cost(self) -> InferenceCost | None:
        """The run's measured inference cost; None when it was never measured."""
        path = self.file(COST_FILE)
        return read_record(path, InferenceCost, "inference cost record") if path.is_file() else None

    def config(self) -> RunConfig:
        return validate(self._config_mapping())

    def _config_mapping(self) -> dict:
        """config.yaml as written (`config_to_yaml`: every section, a final line break), or one line naming it as
        empty or cut short: a cut YAML file can still parse, as a config with settings missing."""
        path = self.file(CONFIG_FILE)
        remedy = "copy the run's config.yaml back, or train into a new --out"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LorabenchError(f"cannot read {path}: {first_line(err)}") from err
        if not text.strip():
            raise LorabenchError(f"{path} is empty; {remedy}")
        try:
            mapping = read_config_file(path)
        except LorabenchError as err:
            raise LorabenchError(f"{path} is cut short or damaged (not valid YAML); {remedy}") from err
        if not text.endswith("\n") or not set(RunConfig.model_fields) <= set(mapping):
            raise LorabenchError(f"{path} is cut short (settings missing); {remedy}")
        return mapping
