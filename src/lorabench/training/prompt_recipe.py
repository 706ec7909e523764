"""A prompt run (`model.method: prompt`): choose the shots from the training rows, fit the classes' offsets on
other training rows, score the splits, record it. The decoder never trains; the record reads like any run's
one-epoch record (the offsets' fitting as its training), so compare and report treat it alike."""

from __future__ import annotations

import time
from collections.abc import Callable

from lorabench.core.config import RunConfig
from lorabench.core.console import say
from lorabench.core.errors import stage
from lorabench.core.runtime import package_versions, peak_memory_mb
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.data.statistics import class_weights
from lorabench.models.prompt import PromptClassifier, choose_calibration_rows, choose_shots
from lorabench.training.records import finish_one_pass, one_pass_trainer

VERSIONED_PACKAGES = ("torch", "transformers")


@one_pass_trainer
def train_prompt(
    config: RunConfig, run: RunDir, resume: bool, on_epoch_end: Callable[[int, dict], None] | None
) -> RunSummary:
    """Score `config.data` with the prompt and write the run record."""
    name = config.model.name
    run.check(config, resume)
    with stage("loading the data and the model", name):
        splits = load_splits(config.data)
        shots = choose_shots(splits.train, splits.label_names, config.prompt.shots, config.train.seed)
        classifier = PromptClassifier.build(config, splits.label_names, shots)
        calibration = choose_calibration_rows(splits.train, shots, config.prompt.calibration_rows, config.train.seed)
    for note in splits.notes:
        say(f"note: {note}")
    run.prepare(config, resume)
    started = time.perf_counter()
    if len(calibration):
        with stage("fitting the offsets", name):
            labels = calibration["label"].to_numpy()
            weights = class_weights(splits.train["label"].to_numpy(), splits.num_labels)
            classifier.calibrate(calibration["text"].tolist(), labels, weights)
        fitted = zip(classifier.words, classifier.offsets, strict=True)
        say(f"offsets fitted on {len(calibration)} training rows: {', '.join(f'{w} {b:+.3f}' for w, b in fitted)}")
    with stage("scoring and writing the record", name):
        classifier.save(run.path)
        frozen = sum(p.numel() for p in classifier.model.parameters())
        details = {
            "best_epoch": 1, "epochs": 1, "train_seconds": round(time.perf_counter() - started, 1),
            "peak_memory_mb": peak_memory_mb(), "trainable_params": 0, "total_params": frozen, "trainable_percent": 0.0,
            "device": classifier.model.device.type, "processes": 1, "effective_batch": {"rows": 0}, "lr": None,
            "precision": "fp32", "versions": package_versions(VERSIONED_PACKAGES), "method": config.method,
        }  # fmt: skip
        # scoring is the whole cost of a prompt run: the saved prompt is checked on a few rows, not all again
        return finish_one_pass(classifier, config, splits, run, details, None, on_epoch_end, check_rows=4)
