"""Training a probe (`model.method: probe`): embed every split once with the frozen model, fit the head, record
the run as one epoch. Under torchrun one process fits it and the others wait for its summary (as tfidf's)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sklearn.metrics import log_loss

from lorabench.core.config import RunConfig
from lorabench.core.console import say
from lorabench.core.errors import stage
from lorabench.core.runtime import package_versions, peak_memory_mb
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir
from lorabench.data.sources import class_weights, load_splits
from lorabench.models.probe import ProbeClassifier, embedding_cache, fit_head
from lorabench.training import distributed
from lorabench.training.records import finish_run, saved_copy
from lorabench.training.tracking import make_tracker

VERSIONED_PACKAGES = ("torch", "transformers", "scikit-learn")


def train_probe(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> RunSummary:
    """Fit on `config.data` and write the run record; rank 0 alone under torchrun."""
    return distributed.on_main(lambda: _fit(config, RunDir(out_dir), resume, on_epoch_end), distributed.world())


def _fit(config: RunConfig, run: RunDir, resume: bool, on_epoch_end: Callable[[int, dict], None] | None):
    name = config.model.name
    run.check(config, resume)  # refuses another run's directory before any work
    with stage("loading the data and the model", name):
        splits = load_splits(config.data)
        probe = ProbeClassifier.frozen(config, splits.label_names)
    probe.cache = embedding_cache()
    labels = splits.train["label"].to_numpy()
    started = time.perf_counter()
    with stage("embedding the training texts", name):
        features = probe.embed(splits.train["text"].tolist())
    with stage("fitting", name):
        weights = class_weights(labels, splits.num_labels)
        probe.regression, probe.settings = fit_head(features, labels, weights, config.train.seed)
        train_seconds = time.perf_counter() - started
        train_loss = log_loss(labels, probe.regression.predict_proba(features), labels=list(range(splits.num_labels)))
    splits.notes.append(f"probe: C={probe.settings['C']} chosen by {probe.settings['cv_folds']}-fold "
                        "cross-validation F1 on the training split's embeddings")  # fmt: skip
    for note in splits.notes:
        say(f"note: {note}")
    run.prepare(config, resume)
    with stage("scoring and writing the record", name):
        probe.save(run.path)
        saved = saved_copy(probe, run, splits.validation["text"].tolist())
        params = probe.parameter_count
        frozen = sum(p.numel() for p in probe.encoder.parameters())
        details = {
            "best_epoch": 1, "epochs": 1, "train_seconds": round(train_seconds, 2), "peak_memory_mb": peak_memory_mb(),
            "trainable_params": params, "total_params": params + frozen,
            "trainable_percent": round(100.0 * params / (params + frozen), 4), "device": probe.encoder.device.type,
            "processes": 1, "effective_batch": {"rows": len(labels)}, "lr": None, "precision": "fp32",
            "versions": package_versions(VERSIONED_PACKAGES), "pooling": probe.pooling, "method": config.method,
        }  # fmt: skip
        summary = finish_run(saved, splits, run, name, config.model.source, details)
        row = {"epoch": 1, "train_loss": round(float(train_loss), 6),
               **{f"val_{k}": v for k, v in summary.val.model_dump().items()}, "seconds": round(train_seconds, 2)}  # fmt: skip
        run.append_metrics(row)
    tracker = make_tracker(config.train.tracking, run.path, config.model_dump(mode="json"), run.path.name)
    tracker.log(row, step=1)
    tracker.finish(summary.model_dump())
    if on_epoch_end is not None:
        on_epoch_end(1, row)
    return summary
