"""Training the TF-IDF baseline: one full-batch fit on the same split, recorded like a LoRA run's single epoch.

LoRA settings and epochs do not apply; `resume` refits. Under torchrun one process fits it and the others wait
for its summary.
"""

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
from lorabench.models.tfidf import TfidfClassifier
from lorabench.training.records import finish_one_pass, one_pass_trainer

VERSIONED_PACKAGES = ("scikit-learn", "numpy")


@one_pass_trainer
def train_tfidf(
    config: RunConfig, run: RunDir, resume: bool, on_epoch_end: Callable[[int, dict], None] | None
) -> RunSummary:
    """Fit on `config.data` and write the run record."""
    name = config.model.name
    run.check(config, resume)  # refuses another run's directory before any work
    with stage("loading the data", name):
        splits = load_splits(config.data)
    texts, labels = splits.train["text"].tolist(), splits.train["label"].to_numpy()
    # fitted before anything is printed or written: texts without a vocabulary fail here, in one line
    with stage("fitting", name):
        started = time.perf_counter()
        classifier = TfidfClassifier.fit(texts, labels, splits.label_names, config.train.seed)
        train_seconds = time.perf_counter() - started
        train_loss = log_loss(labels, classifier.predict_proba(texts), labels=list(range(splits.num_labels)))
    splits.notes.append(_regularization_note(classifier))
    for note in splits.notes:
        say(f"note: {note}")
    run.prepare(config, resume)
    with stage("scoring and writing the record", name):
        classifier.save(run.path)
        details = _details(classifier, len(labels), train_seconds)
        return finish_one_pass(classifier, config, splits, run, details, train_loss, on_epoch_end)


def _details(classifier: TfidfClassifier, rows: int, train_seconds: float) -> dict:
    """The summary fields of a full-batch fit."""
    params = classifier.parameter_count
    return {
        "best_epoch": 1,
        "epochs": 1,
        "train_seconds": round(train_seconds, 2),
        "peak_memory_mb": peak_memory_mb(),  # this process's peak resident memory
        "trainable_params": params,
        "total_params": params,
        "trainable_percent": 100.0,
        "device": "cpu",
        "processes": 1,  # rank 0 fits it alone, also under torchrun
        "effective_batch": {"rows": rows},  # one full-batch fit
        "lr": None,  # L-BFGS needs none
        "precision": "fp64",
        "versions": package_versions(VERSIONED_PACKAGES),
        "vocabulary_size": classifier.vocabulary_size,
    }


def _regularization_note(classifier: TfidfClassifier) -> str:
    """How C was chosen, for summary.json's notes (settings.json records it too)."""
    regression = classifier.settings["regression"]
    if not regression["cv_folds"]:
        return f"tfidf: C={regression['C']} (a class has one training row: no cross-validation)"
    return (
        f"tfidf: C={regression['C']} chosen by {regression['cv_folds']}-fold cross-validation F1 on the training split"
    )
