"""The classical baseline `tfidf`: TF-IDF of word 1-2 grams + class-weighted logistic regression (scikit-learn).

It is trained on the same split, scored with the same metrics and writes the same run record as a LoRA run, so
a comparison shows when a fine-tuned language model does not beat it. The fitted model is stored as plain arrays
(safetensors) and JSON, never pickle or joblib: unpickling a file can execute code.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from lorabench import record
from lorabench.config import RunConfig
from lorabench.data import class_weights, load_splits
from lorabench.errors import LorabenchError
from lorabench.evaluate import best_threshold, classification_metrics, predicted_labels, write_predictions
from lorabench.ui import say

MODEL_NAME = "tfidf"
MODEL_DIR = "tfidf"
WEIGHTS_FILE = "weights.safetensors"
VOCABULARY_FILE = "vocabulary.json"
SETTINGS_FILE = "settings.json"

# Word 1-2 grams seen in at least 2 training texts (a 75k -> 15k vocabulary on the disaster tweets, +0.015
# validation F1 over min_df=1); scikit-learn's default C=1 and L2 penalty. Saved with each model, so changing
# these later never changes how an old model reads text.
VECTORIZER_SETTINGS = {
    "ngram_range": [1, 2],
    "min_df": 2,
    "lowercase": True,
    "sublinear_tf": False,
    "norm": "l2",
    "smooth_idf": True,
}
REGULARIZATION_C = 1.0


def _vectorizer(settings: dict, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(
        ngram_range=tuple(settings["ngram_range"]),
        min_df=settings["min_df"],
        lowercase=settings["lowercase"],
        sublinear_tf=settings["sublinear_tf"],
        norm=settings["norm"],
        smooth_idf=settings["smooth_idf"],
        vocabulary=vocabulary,
        dtype=np.float64,
    )


class TfidfClassifier:
    """A fitted TF-IDF + logistic regression pair, with the class names and the F1-maximising threshold."""

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        regression: LogisticRegression,
        settings: dict,
        label_names: list,
        threshold: float | None = None,
    ):
        self.vectorizer = vectorizer
        self.regression = regression
        self.settings = settings
        self.label_names = label_names
        self.threshold = threshold

    @classmethod
    def fit(cls, texts: list[str], labels: np.ndarray, label_names: list, seed: int = 0) -> TfidfClassifier:
        """Fit on the training texts with the weights n / (k * count) the LoRA runs use too."""
        vectorizer = _vectorizer(VECTORIZER_SETTINGS)
        features = vectorizer.fit_transform(texts)
        weights = class_weights(labels, len(label_names))
        regression = LogisticRegression(
            C=REGULARIZATION_C, class_weight=dict(enumerate(weights)), max_iter=2000, random_state=seed
        )
        regression.fit(features, labels)
        return cls(vectorizer, regression, dict(VECTORIZER_SETTINGS), list(label_names))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), number of classes), columns in `label_names` order."""
        return self.regression.predict_proba(self.vectorizer.transform(texts))

    @property
    def parameter_count(self) -> int:
        return int(self.regression.coef_.size + self.regression.intercept_.size)

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        save_file(
            {"idf": self.vectorizer.idf_, "coef": self.regression.coef_, "intercept": self.regression.intercept_},
            str(directory / WEIGHTS_FILE),
        )
        (directory / VOCABULARY_FILE).write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
        settings = {"vectorizer": self.settings, "label_names": self.label_names}
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, run_dir: str | Path) -> TfidfClassifier:
        """Rebuild the classifier of a finished `tfidf` run from its arrays, vocabulary and summary."""
        from safetensors.numpy import load_file

        run = record.RunDir(run_dir)
        summary = run.summary()
        directory = run.file(MODEL_DIR)
        try:
            arrays = load_file(str(directory / WEIGHTS_FILE))
            terms = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
            settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise LorabenchError(f"cannot load the tfidf model in {directory}: {str(err).splitlines()[0]}") from None
        vectorizer = _vectorizer(settings["vectorizer"], {term: i for i, term in enumerate(terms)})
        vectorizer.idf_ = arrays["idf"]  # scikit-learn's supported way to give a vectorizer fitted idf values
        regression = LogisticRegression()
        regression.classes_ = np.arange(len(settings["label_names"]))
        regression.coef_, regression.intercept_ = arrays["coef"], arrays["intercept"]
        regression.n_features_in_ = arrays["coef"].shape[1]
        return cls(vectorizer, regression, settings["vectorizer"], settings["label_names"], summary.get("threshold"))


def train_tfidf(config: RunConfig, out_dir: str | Path, resume: bool = False, on_epoch_end=None) -> dict:
    """Fit the baseline on `config.data` and write a run record like `lorabench.train.train` does.

    The LoRA settings and epochs do not apply; it is one pass, recorded as epoch 1. `resume` refits.
    """
    splits = load_splits(config.data)
    for note in splits.notes:
        say(f"note: {note}")
    run = record.RunDir(out_dir)
    run.prepare(config, resume)
    names = splits.label_names
    train_labels = splits.train["label"].to_numpy()
    started = time.perf_counter()
    classifier = TfidfClassifier.fit(splits.train["text"].tolist(), train_labels, names, config.train.seed)
    train_seconds = time.perf_counter() - started
    train_loss = log_loss(
        train_labels, classifier.predict_proba(splits.train["text"].tolist()), labels=list(range(len(names)))
    )

    results, threshold = {}, None
    for split_name, frame in (("val", splits.validation), ("test", splits.test)):
        if frame is None:
            results[split_name] = None
            continue
        labels = frame["label"].to_numpy()
        probabilities = classifier.predict_proba(frame["text"].tolist())
        if split_name == "val" and len(names) == 2:
            threshold = round(best_threshold(labels, probabilities[:, 1]), 6)
        write_predictions(run.file(f"{split_name}_predictions.csv"), frame, probabilities, names)
        labelled = bool((labels >= 0).all())
        results[split_name] = (
            classification_metrics(labels, predicted_labels(probabilities), len(names)) if labelled else None
        )
    classifier.threshold = threshold
    record.replace_dir(classifier.save, run.file(MODEL_DIR))

    row = {
        "epoch": 1,
        "train_loss": round(float(train_loss), 6),
        **{f"val_{k}": v for k, v in results["val"].items()},
        "seconds": round(train_seconds, 2),
    }
    run.append_metrics(row)
    if on_epoch_end is not None:
        on_epoch_end(1, row)
    params = classifier.parameter_count
    summary = {
        "model": config.model.name,
        "model_source": config.model.source,
        "best_epoch": 1,
        "epochs": 1,
        "val": results["val"],
        "test": results["test"],
        "train_seconds": round(train_seconds, 2),
        # This process's peak resident set size in MiB (ru_maxrss is in KiB on Linux), as LoRA runs on CPU.
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": params,
        "total_params": params,
        "trainable_percent": 100.0,
        "label_names": names,
        "threshold": threshold,
        "rows": {
            "train": len(splits.train),
            "validation": len(splits.validation),
            "test": len(splits.test) if splits.test is not None else 0,
        },
        "truncated_texts": 0,
        "class_weights": [round(float(w), 6) for w in class_weights(train_labels, len(names))],
        "device": "cpu",
        "processes": 1,  # rank 0 fits it alone, also under torchrun
        "effective_batch": {"rows": len(train_labels)},  # one full-batch fit
        "lr": None,  # L-BFGS needs none
        "precision": "fp64",
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": version("scikit-learn"),
            "numpy": np.__version__,
            "machine": platform.machine(),
        },
        "vocabulary_size": len(classifier.vectorizer.vocabulary_),
        "notes": splits.notes,
    }
    record.write_json(run.file(record.SUMMARY_FILE), summary)
    say(f"{config.model.name}: val F1 {results['val']['f1']:.4f} after {train_seconds:.1f} s; record in {run.path}")
    return summary
