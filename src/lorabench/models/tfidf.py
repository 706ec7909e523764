"""The classical baseline `tfidf`: TF-IDF of word 1-2 grams + class-weighted logistic regression (scikit-learn).

It is trained on the same split, scored with the same metrics and writes the same run record as a LoRA run, so
a comparison shows when a fine-tuned language model does not beat it. The fitted model is stored as plain arrays
(safetensors) and JSON, never pickle or joblib: unpickling a file can execute code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.storage import RunDir, replace_dir
from lorabench.data.sources import class_weights

KIND = "tfidf"
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


@dataclass
class TfidfClassifier:
    """A fitted TF-IDF + logistic regression pair, with the class names and the F1-maximising threshold."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    trains_in_epochs: ClassVar[bool] = False  # one full-batch fit, recorded as epoch 1

    vectorizer: TfidfVectorizer
    regression: LogisticRegression
    settings: dict
    label_names: list
    threshold: float | None = None

    @classmethod
    def fit(cls, texts: list[str], labels: np.ndarray, label_names: list, seed: int = 0) -> TfidfClassifier:
        """Fit on the training texts with the weights n / (k * count) the LoRA runs use too."""
        vectorizer = _vectorizer(VECTORIZER_SETTINGS)
        try:
            features = vectorizer.fit_transform(texts)
        except ValueError as err:  # scikit-learn's "empty vocabulary" / "After pruning, no terms remain"
            if "vocabulary" not in str(err) and "no terms remain" not in str(err):
                raise
            raise LorabenchError(
                f"tfidf: the training texts give no vocabulary (no word of 2+ letters or digits occurs in at least "
                f"{VECTORIZER_SETTINGS['min_df']} of the {len(texts)} texts); check that the text column holds "
                "the texts, or train a LoRA model instead"
            ) from err
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

    def save(self, run_dir: str | Path) -> None:
        """Arrays, vocabulary and settings into the run's tfidf/ directory, swapped in whole."""

        def build(directory: Path) -> None:
            terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
            arrays = {
                "idf": self.vectorizer.idf_,
                "coef": self.regression.coef_,
                "intercept": self.regression.intercept_,
            }
            save_file(arrays, str(directory / WEIGHTS_FILE))
            (directory / VOCABULARY_FILE).write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
            settings = {"vectorizer": self.settings, "label_names": self.label_names}
            (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

        replace_dir(build, Path(run_dir) / MODEL_DIR)

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> TfidfClassifier:
        """Rebuild the classifier of a finished run from its arrays, vocabulary and summary (`batch_size` is
        the interface's; scikit-learn scores any number of texts at once)."""
        run = RunDir(run_dir)
        summary = run.summary()
        directory = run.file(MODEL_DIR)
        try:
            arrays = load_file(str(directory / WEIGHTS_FILE))
            terms = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
            settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        except Exception as err:  # OSError, JSON errors, safetensors' own error for a damaged weights file
            raise LorabenchError(
                f"cannot load the tfidf model in {directory} ({first_line(err)}); train the run again"
            ) from err
        vectorizer = _vectorizer(settings["vectorizer"], {term: i for i, term in enumerate(terms)})
        vectorizer.idf_ = arrays["idf"]  # scikit-learn's supported way to give a vectorizer fitted idf values
        regression = LogisticRegression()
        regression.classes_ = np.arange(len(settings["label_names"]))
        regression.coef_, regression.intercept_ = arrays["coef"], arrays["intercept"]
        regression.n_features_in_ = arrays["coef"].shape[1]
        return cls(vectorizer, regression, settings["vectorizer"], settings["label_names"], summary.threshold)

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(
            "export --merge applies to LoRA runs; a TF-IDF run has no base weights to merge "
            "into (export it without --merge)"
        )
