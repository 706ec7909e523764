"""One surface for every kind of classifier, and the registry that picks the kind a run directory records.

Callers (predict, export, serve, compare, report) hold a `Classifier` and never ask which kind it is: a new kind
is a module in lorabench.models with a class of this shape, added to CLASSIFIERS, plus its trainer in
lorabench.training.run.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from lorabench.core.errors import LorabenchError
from lorabench.core.storage import CHECKPOINT_DIR, CONFIG_FILE, TRACKER_DIRS, RunDir
from lorabench.models import ensemble


class Classifier(Protocol):
    """What every kind answers: class probabilities for texts, its classes and threshold, save and load."""

    kind: ClassVar[str]
    model_dir: ClassVar[str]  # the directory of a run that holds this kind's model files
    trains_in_epochs: ClassVar[bool]
    adapts_a_base_model: ClassVar[bool]  # a LoRA-like adapter over pretrained weights (peft loads the run export)
    library_name: ClassVar[str]  # the library that loads a run export of this kind (a model card's metadata)
    label_names: list
    threshold: float | None

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...

    def save(self, run_dir: str | Path) -> None: ...

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> Classifier: ...

    def export_merged(self, directory: Path) -> dict: ...

    def export_onnx(self, directory: Path, quantize: str) -> dict: ...


class AveragingClassifier(ensemble.AveragingClassifier):
    """The averaging kind, its members loaded by `load_classifier` whatever their kinds (lorabench.models.ensemble
    cannot import this module: it would be an import cycle)."""

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> AveragingClassifier:
        return cls.load_with(run_dir, batch_size, load_classifier)


# Each kind's class as module:name, imported when a run of that kind is trained or loaded: loading a tfidf run
# never imports torch, transformers and peft (seconds of a process's start). test_round_trip checks the kinds.
CLASSIFIERS: dict[str, str] = {
    "lora": "lorabench.models.lora:LoraClassifier",
    "full": "lorabench.models.lora:FullClassifier",
    "probe": "lorabench.models.probe:ProbeClassifier",
    "setfit": "lorabench.models.setfit:SetFitClassifier",
    "prompt": "lorabench.models.prompt:PromptClassifier",
    "tfidf": "lorabench.models.tfidf:TfidfClassifier",
    "ensemble": "lorabench.models.registry:AveragingClassifier",
    "onnx": "lorabench.models.onnx:OnnxClassifier",
}


DEFAULT_KIND = "lora"  # what runs written before kinds were recorded hold, unless their files say otherwise


def classifier_type(kind: str) -> type[Classifier]:
    if kind not in CLASSIFIERS:
        raise LorabenchError(f"unknown model kind '{kind}'; lorabench has {', '.join(sorted(CLASSIFIERS))}")
    module, name = CLASSIFIERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def recorded_kind(run: RunDir) -> str:
    """The kind a finished run records; runs written before kinds were recorded hold one kind's model files."""
    kind = run.summary().kind
    if kind is not None:
        return kind
    for candidate in CLASSIFIERS:
        if run.file(classifier_type(candidate).model_dir).is_dir():
            return candidate
    raise LorabenchError(f"{run.path} holds no model files of any kind ({', '.join(sorted(CLASSIFIERS))})")


# Weights in these formats are pickles, which run code when loaded; lorabench writes safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")  # a config.json naming these makes transformers import code


def check_untrusted(run: RunDir) -> None:
    """Refuse, before anything is read, a run directory that could make loading it run or read what is not its own:
    a symbolic link out of it, a pickle weights file, a `*config.json` that names remote code. Runs are shared and
    downloaded; a link or a `.bin` lorabench never writes is the sign of one put together by hand. The resume
    checkpoint (lorabench's own, loaded with weights_only), the trackers' logs and hidden entries are not part of
    what is loaded."""
    root = run.path.resolve()
    for directory, folders, files in os.walk(run.path):
        here = Path(directory)
        if here == run.path:
            skipped = {CHECKPOINT_DIR, *TRACKER_DIRS.values()}
            folders[:] = [name for name in folders if name not in skipped and not name.startswith(".")]
        for name in [*folders, *files]:
            path = here / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise LorabenchError(
                    f"{path} is a symbolic link out of the run directory; a run is loaded only from its own files"
                )
        for name in files:
            path = here / name
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise LorabenchError(
                    f"{path} is a pickle weights file, which can run code when loaded; a lorabench run holds "
                    "safetensors only"
                )
            if name.endswith("config.json") and _names_remote_code(path):
                raise LorabenchError(
                    f"{path} names remote code ({' / '.join(REMOTE_CODE_KEYS)}); a run's model is never loaded with "
                    "code of its own"
                )


def _names_remote_code(path: Path) -> bool:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # not this check's concern: loading names the damaged file
    return isinstance(config, dict) and any(config.get(key) for key in REMOTE_CODE_KEYS)


def load_classifier(run_dir: str | Path, batch_size: int | None = None) -> Classifier:
    """The classifier of a finished run, of whatever kind it records (the one entry point: the run is checked
    here, before anything is loaded)."""
    run = checked_run(run_dir)
    return classifier_type(recorded_kind(run)).load(run.path, batch_size)


def checked_run(run_dir: str | Path) -> RunDir:
    """The run directory, refused in one line unless it is a lorabench run loaded only from its own files."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise LorabenchError(f"run directory not found: {run.path}")
    if not run.file(CONFIG_FILE).is_file():
        raise LorabenchError(f"{run.path} is not a lorabench run (no {CONFIG_FILE})")
    check_untrusted(run)
    return run
