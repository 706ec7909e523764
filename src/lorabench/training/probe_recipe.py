"""Training a probe (`model.method: probe`): embed every split once with the frozen model, fit the head, record
the run as one epoch; SetFit (`setfit`) is the same with the encoder tuned on pairs of texts first. Under torchrun
one process fits it and the others wait for its summary (as tfidf's)."""

from __future__ import annotations

import time
from collections.abc import Callable

from sklearn.metrics import log_loss

from lorabench.core.config import RunConfig
from lorabench.core.console import say
from lorabench.core.errors import stage
from lorabench.core.runtime import package_versions, peak_memory_mb
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.data.statistics import class_weights
from lorabench.models.probe import embedding_cache
from lorabench.models.registry import classifier_type
from lorabench.models.tfidf import fit_regression
from lorabench.training.records import finish_one_pass, one_pass_trainer

VERSIONED_PACKAGES = ("torch", "transformers", "scikit-learn")


@one_pass_trainer
def train_probe(
    config: RunConfig, run: RunDir, resume: bool, on_epoch_end: Callable[[int, dict], None] | None
) -> RunSummary:
    """Fit on `config.data` and write the run record."""
    name = config.model.name
    run.check(config, resume)  # refuses another run's directory before any work
    with stage("loading the data and the model", name):
        splits = load_splits(config.data)
        probe = classifier_type(config.kind).frozen(config, splits.label_names)
    probe.cache = embedding_cache()
    texts, labels = splits.train["text"].tolist(), splits.train["label"].to_numpy()
    started = time.perf_counter()
    with stage("tuning the encoder on pairs of training texts", name):
        precision = probe.tune(texts, labels, config)
    with stage("embedding the training texts", name):
        features = probe.embed(texts)
    with stage("fitting", name):
        weights = class_weights(labels, splits.num_labels)
        probe.regression, probe.settings = fit_regression(features, labels, weights, config.train.seed)
        train_seconds = time.perf_counter() - started
        train_loss = log_loss(labels, probe.regression.predict_proba(features), labels=list(range(splits.num_labels)))
    splits.notes.append(f"probe: C={probe.settings['C']} chosen by {probe.settings['cv_folds']}-fold "
                        "cross-validation F1 on the training split's embeddings")  # fmt: skip
    for note in splits.notes:
        say(f"note: {note}")
    run.prepare(config, resume)
    with stage("scoring and writing the record", name):
        probe.save(run.path)
        params, frozen = probe.parameter_count, sum(p.numel() for p in probe.encoder.parameters())
        params, frozen, lr = (
            (params + frozen, 0, config.train.full_lr) if probe.tunes_encoder else (params, frozen, None)
        )
        details = {
            "best_epoch": 1, "epochs": 1, "train_seconds": round(train_seconds, 2), "peak_memory_mb": peak_memory_mb(),
            "trainable_params": params, "total_params": params + frozen,
            "trainable_percent": round(100.0 * params / (params + frozen), 4), "device": probe.encoder.device.type,
            "processes": 1, "effective_batch": {"rows": len(labels)}, "lr": lr, "precision": precision,
            "versions": package_versions(VERSIONED_PACKAGES), "pooling": probe.pooling, "method": config.method,
        }  # fmt: skip
        return finish_one_pass(probe, config, splits, run, details, train_loss, on_epoch_end)
