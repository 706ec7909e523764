"""A prompt run (`model.method: prompt`): choose the shots from the training rows, score the splits, record it.
Nothing trains; the record reads like any run's one-epoch record, so compare and report treat it alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lorabench.core.config import RunConfig
from lorabench.core.console import say
from lorabench.core.errors import stage
from lorabench.core.runtime import package_versions, peak_memory_mb
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.models.prompt import PromptClassifier, choose_shots
from lorabench.training import distributed
from lorabench.training.records import finish_run, saved_copy
from lorabench.training.tracking import make_tracker

VERSIONED_PACKAGES = ("torch", "transformers")


def train_prompt(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> RunSummary:
    """Score `config.data` with the prompt and write the run record; rank 0 alone under torchrun."""
    return distributed.on_main(lambda: _run(config, RunDir(out_dir), resume, on_epoch_end), distributed.world())


def _run(config: RunConfig, run: RunDir, resume: bool, on_epoch_end: Callable[[int, dict], None] | None):
    name = config.model.name
    run.check(config, resume)
    with stage("loading the data and the model", name):
        splits = load_splits(config.data)
        shots = choose_shots(splits.train, splits.label_names, config.prompt.shots, config.train.seed)
        classifier = PromptClassifier.build(config, splits.label_names, shots)
    for note in splits.notes:
        say(f"note: {note}")
    run.prepare(config, resume)
    started = time.perf_counter()
    with stage("scoring and writing the record", name):
        classifier.save(run.path)
        saved = saved_copy(classifier, run, splits.validation["text"].tolist()[:1])  # the prompt reads back
        frozen = sum(p.numel() for p in classifier.model.parameters())
        details = {
            "best_epoch": 1, "epochs": 1, "train_seconds": 0.0, "peak_memory_mb": peak_memory_mb(),
            "trainable_params": 0, "total_params": frozen, "trainable_percent": 0.0,
            "device": classifier.model.device.type, "processes": 1, "effective_batch": {"rows": 0}, "lr": None,
            "precision": "fp32", "versions": package_versions(VERSIONED_PACKAGES), "method": config.method,
        }  # fmt: skip
        summary = finish_run(saved, splits, run, name, config.model.source, details)
        row = {"epoch": 1, "train_loss": None, **{f"val_{k}": v for k, v in summary.val.model_dump().items()},
               "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
        run.append_metrics(row)
    tracker = make_tracker(config.train.tracking, run.path, config.model_dump(mode="json"), run.path.name)
    tracker.log({key: value for key, value in row.items() if value is not None}, step=1)
    tracker.finish(summary.model_dump())
    if on_epoch_end is not None:
        on_epoch_end(1, row)
    return summary
