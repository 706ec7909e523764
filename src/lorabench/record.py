"""The run record on disk: config, per-epoch metrics, best adapter, resume checkpoint and summary.

Every file is written to a temporary name and renamed, so a kill never leaves a truncated file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from lorabench.config import RunConfig, config_to_yaml
from lorabench.errors import LorabenchError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"


def write_atomic(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def replace_dir(build, target: Path) -> None:
    """Fill a fresh temporary directory with `build(tmp_dir)`, then swap it in for `target`."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
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


class RunDir:
    """One training run's directory; refuses to mix two different runs in one place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def prepare(self, config: RunConfig, resume: bool) -> bool:
        """Create the directory or check it holds this same run; returns True when a checkpoint can resume."""
        existing = [p for p in self.path.iterdir()] if self.path.is_dir() else []
        if self.path.exists() and not self.path.is_dir():
            raise LorabenchError(f"output path exists and is not a directory: {self.path}")
        if existing:
            config_path = self.file(CONFIG_FILE)
            if not config_path.is_file():
                raise LorabenchError(f"output directory {self.path} is not empty and holds no lorabench run; choose another --out")
            if yaml.safe_load(config_path.read_text(encoding="utf-8")) != config.model_dump(mode="json"):
                raise LorabenchError(f"output directory {self.path} already holds a different run; choose another --out")
            if not resume:
                raise LorabenchError(f"output directory {self.path} already holds this run; pass --resume to continue it or choose another --out")
            return self.file(CHECKPOINT_DIR).is_dir()
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

    def summary(self) -> dict:
        path = self.file(SUMMARY_FILE)
        if not path.is_file():
            raise LorabenchError(f"{self.path} holds no finished run (no {SUMMARY_FILE})")
        return read_json(path)

    def config(self) -> RunConfig:
        from lorabench.config import read_config_file, validate

        return validate(read_config_file(self.file(CONFIG_FILE)))
