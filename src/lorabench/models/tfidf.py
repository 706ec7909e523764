"""The classical baseline `tfidf`: TF-IDF of word 1-2 grams and character 2-5 grams, stacked, + class-weighted
logistic regression whose C is chosen by cross-validation on the training split (scikit-learn).

It is trained on the same split, scored with the same metrics and writes the same run record as a LoRA run, so
a comparison shows when a fine-tuned language model does not beat it. The fitted model is stored as plain arrays
(safetensors) and JSON, never pickle or joblib: unpickling a file can execute code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.storage import RunDir, load_arrays, replace_dir, save_arrays
from lorabench.data.statistics import class_weights

KIND = "tfidf"
MODEL_DIR = "tfidf"
WEIGHTS_FILE = "weights.safetensors"
VOCABULARY_FILE = "vocabulary.json"
SETTINGS_FILE = "settings.json"

# Each feature block's vectorizer; the blocks are stacked side by side in this order. Word 1-2 grams seen in at
# least 2 training texts (+0.015 validation F1 over min_df=1 on the disaster tweets) and character 2-5 grams
# within words, which catch misspellings, hashtags and word parts (+0.01). Every link becomes one token
# (`replace_urls`): t.co links are unique per tweet, so their characters were noise. Saved with each model, so
# changing these later never changes how an old model reads text; settings missing from an old model's file
# take the values it was fitted with (LEGACY_DEFAULTS).
FEATURE_SETTINGS = {
    "word": {"analyzer": "word", "ngram_range": [1, 2], "min_df": 2, "lowercase": True, "sublinear_tf": False,
             "norm": "l2", "smooth_idf": True, "replace_urls": True},
    "char": {"analyzer": "char_wb", "ngram_range": [2, 5], "min_df": 2, "lowercase": True, "sublinear_tf": False,
             "norm": "l2", "smooth_idf": True, "replace_urls": True},
}  # fmt: skip
LEGACY_DEFAULTS = {"analyzer": "word", "replace_urls": False}
# C (inverse L2 strength) is the C of this grid with the best mean F1 over stratified folds of the training split.
C_GRID = [0.25, 0.5, 1.0, 2.0, 4.0]
CV_FOLDS = 5
DEFAULT_C = 1.0  # when a class has a single training row, no fold can hold it out: scikit-learn's default
URL_PATTERN = re.compile(r"https?://\S+")
URL_TOKEN = " httpurl "


def _url_preprocessor(lowercase: bool):
    """Links to one token; a preprocessor replaces scikit-learn's own lowercasing, so it lowercases too."""

    def preprocess(text: str) -> str:
        return URL_PATTERN.sub(URL_TOKEN, text.lower() if lowercase else text)

    return preprocess


def _vectorizer(settings: dict, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    settings = {**LEGACY_DEFAULTS, **settings}
    return TfidfVectorizer(
        analyzer=settings["analyzer"],
        ngram_range=tuple(settings["ngram_range"]),
        min_df=settings["min_df"],
        lowercase=settings["lowercase"],
        preprocessor=_url_preprocessor(settings["lowercase"]) if settings["replace_urls"] else None,
        sublinear_tf=settings["sublinear_tf"],
        norm=settings["norm"],
        smooth_idf=settings["smooth_idf"],
        vocabulary=vocabulary,
        dtype=np.float64,
    )


def _fit_features(texts: list[str]) -> tuple[dict[str, TfidfVectorizer], scipy.sparse.csr_matrix]:
    """Every feature block fitted on the training texts, and their stacked features."""
    vectorizers = {name: _vectorizer(settings) for name, settings in FEATURE_SETTINGS.items()}
    try:
        blocks = [vectorizer.fit_transform(texts) for vectorizer in vectorizers.values()]
    except ValueError as err:  # scikit-learn's "empty vocabulary" / "After pruning, no terms remain"
        if "vocabulary" not in str(err) and "no terms remain" not in str(err):
            raise
        raise LorabenchError(
            f"tfidf: the training texts give no vocabulary (no word of 2+ letters or digits occurs in at least "
            f"{FEATURE_SETTINGS['word']['min_df']} of the {len(texts)} texts); check that the text column holds "
            "the texts, or train a LoRA model instead"
        ) from err
    return vectorizers, scipy.sparse.hstack(blocks, format="csr")


def _regression(c: float, weights: np.ndarray, seed: int) -> LogisticRegression:
    """newton-cg, not scikit-learn's default lbfgs: a third of the CPU time on 5 classes of long texts and 0.7 of it
    on the tweets, with the same or a better validation F1 (bench/results/tfidf_solver.json)."""
    return LogisticRegression(
        C=c, class_weight=dict(enumerate(weights)), solver="newton-cg", max_iter=2000, random_state=seed
    )


def choose_c(features, labels: np.ndarray, weights: np.ndarray, seed: int) -> tuple[float, int]:
    """The C of C_GRID with the best mean F1 (binary, or macro for more classes: the runs' own metric) over
    stratified folds of the training rows, and the number of folds (0: too few rows of a class, DEFAULT_C)."""
    folds = min(CV_FOLDS, int(np.bincount(labels).min()))
    if folds < 2:
        return DEFAULT_C, 0
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scoring = "f1" if len(weights) == 2 else "f1_macro"
    scores = [
        cross_val_score(_regression(c, weights, seed), features, labels, cv=splitter, scoring=scoring).mean()
        for c in C_GRID
    ]
    return C_GRID[int(np.argmax(scores))], folds


def fit_regression(features, labels: np.ndarray, weights: np.ndarray, seed: int) -> tuple[LogisticRegression, dict]:
    """The class-weighted logistic regression fitted with the C `choose_c` picks, and {"C", "cv_folds"}; the probe
    method fits its head the same way."""
    c, folds = choose_c(features, labels, weights, seed)
    return _regression(c, weights, seed).fit(features, labels), {"C": c, "cv_folds": folds}


@dataclass
class TfidfClassifier:
    """Fitted TF-IDF feature blocks + logistic regression, with the class names and the F1-maximising threshold."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    trains_in_epochs: ClassVar[bool] = False  # one full-batch fit, recorded as epoch 1
    adapts_a_base_model: ClassVar[bool] = False
    library_name: ClassVar[str] = "scikit-learn"

    vectorizers: dict[str, TfidfVectorizer]
    regression: LogisticRegression
    settings: dict  # {"features": {block: vectorizer settings}, "regression": {"C": ..., "cv_folds": ...}}
    label_names: list
    threshold: float | None = None

    @classmethod
    def fit(cls, texts: list[str], labels: np.ndarray, label_names: list, seed: int = 0) -> TfidfClassifier:
        """Fit on the training texts with the weights n / (k * count) the LoRA runs use too."""
        vectorizers, features = _fit_features(texts)
        weights = class_weights(labels, len(label_names))
        regression, chosen = fit_regression(features, labels, weights, seed)
        settings = {"features": FEATURE_SETTINGS, "regression": {**chosen, "C_grid": C_GRID}}
        return cls(vectorizers, regression, json.loads(json.dumps(settings)), list(label_names))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), number of classes), columns in `label_names` order."""
        blocks = [vectorizer.transform(texts) for vectorizer in self.vectorizers.values()]
        return self.regression.predict_proba(scipy.sparse.hstack(blocks, format="csr"))

    @property
    def parameter_count(self) -> int:
        return int(self.regression.coef_.size + self.regression.intercept_.size)

    @property
    def vocabulary_size(self) -> int:
        return sum(len(vectorizer.vocabulary_) for vectorizer in self.vectorizers.values())

    @property
    def regularization_c(self) -> float | None:
        """The C fitted with; None for models saved before C was chosen (they used DEFAULT_C)."""
        return self.settings.get("regression", {}).get("C")

    def save(self, run_dir: str | Path) -> None:
        """Arrays, vocabularies and settings into the run's tfidf/ directory, swapped in whole."""

        def build(directory: Path) -> None:
            arrays = {f"idf_{name}": vectorizer.idf_ for name, vectorizer in self.vectorizers.items()}
            arrays |= {"coef": self.regression.coef_, "intercept": self.regression.intercept_}
            save_arrays(directory / WEIGHTS_FILE, arrays)
            vocabularies = {
                name: sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
                for name, vectorizer in self.vectorizers.items()
            }
            (directory / VOCABULARY_FILE).write_text(json.dumps(vocabularies, ensure_ascii=False), encoding="utf-8")
            settings = {**self.settings, "label_names": self.label_names}
            (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

        replace_dir(build, Path(run_dir) / MODEL_DIR)

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> TfidfClassifier:
        """Rebuild the classifier of a finished run from its arrays, vocabularies and summary (`batch_size` is
        the interface's; scikit-learn scores any number of texts at once)."""
        classifier = cls.read_saved(run_dir)
        classifier.threshold = RunDir(run_dir).summary().threshold
        return classifier

    @classmethod
    def read_saved(cls, run_dir: str | Path) -> TfidfClassifier:
        """The model files of a run, without the threshold its summary adds: training scores its splits with
        this copy, so a file that reloads wrongly shows in the run's own figures instead of hiding behind the
        model still in memory."""
        directory = RunDir(run_dir).file(MODEL_DIR)
        try:
            arrays = load_arrays(directory / WEIGHTS_FILE)
            vocabularies = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
            settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        except Exception as err:  # OSError, JSON errors, safetensors' own error for a damaged weights file
            raise LorabenchError(
                f"cannot load the tfidf model in {directory} ({first_line(err)}); train the run again"
            ) from err
        if "vectorizer" in settings:  # the single word block of models saved before feature blocks
            settings = {"features": {"word": settings.pop("vectorizer")}, **settings}
            vocabularies, arrays["idf_word"] = {"word": vocabularies}, arrays.pop("idf")
        label_names = settings.pop("label_names")
        vectorizers = {}
        for name, block in settings["features"].items():
            vectorizer = _vectorizer(block, {term: i for i, term in enumerate(vocabularies[name])})
            vectorizer.idf_ = arrays[f"idf_{name}"]  # scikit-learn's supported way to give fitted idf values
            vectorizers[name] = vectorizer
        regression = LogisticRegression()
        regression.classes_ = np.arange(len(label_names))
        regression.coef_, regression.intercept_ = arrays["coef"], arrays["intercept"]
        regression.n_features_in_ = arrays["coef"].shape[1]
        return cls(vectorizers, regression, settings, label_names)

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(
            "export --merge applies to LoRA runs; a TF-IDF run has no base weights to merge "
            "into (export it without --merge)"
        )

    def export_onnx(self, directory: Path, quantize: str) -> dict:
        raise LorabenchError(
            "export --format onnx applies to LoRA and probe runs; a TF-IDF run is a scikit-learn model (export it "
            "without --format onnx)"
        )
