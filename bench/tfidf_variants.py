"""Which TF-IDF baseline: variants of `tfidf`'s features and model, judged by 5-fold cross-validation F1 on the
training split only, each then scored once on the validation split (printed beside it, never used to choose).

    python bench/tfidf_variants.py [--data ../shared/data/disaster_tweets/train.csv] [VARIANT ...]

Every variant is the shipped model (lorabench.models.tfidf: word 1-2 grams + char_wb 2-5 grams, links as one
token, class-weighted logistic regression) with one thing changed; C is chosen per variant from its own grid by
the same cross-validation. Prints one line per variant: the CV F1 per C, the chosen C, and validation F1.
"""

from __future__ import annotations

import argparse
import html
import re
import time

import numpy as np
import scipy.sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from lorabench.core.config import DataConfig
from lorabench.data.sources import load_splits
from lorabench.data.statistics import class_weights
from lorabench.models import tfidf

MENTION = re.compile(r"@\w+")
SHIPPED = tfidf.FEATURE_SETTINGS
LINEAR_GRID = [0.5, 1.0, 2.0, 4.0, 8.0]
NB_GRID = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0]  # NB-scaled features are larger: the optimum moves to smaller C


def unescape_and_mask_mentions(text: str) -> str:
    """'&amp;' -> '&', every @user -> one token."""
    return MENTION.sub(" @user ", html.unescape(text))


# name: (feature settings, text preprocessing, naive-Bayes feature scaling (NBSVM, Wang & Manning 2012), C grid)
VARIANTS = {
    "shipped": (SHIPPED, None, False, LINEAR_GRID),
    "sublinear_tf": ({k: {**v, "sublinear_tf": True} for k, v in SHIPPED.items()}, None, False, LINEAR_GRID),
    "unescaped_mentions": (SHIPPED, unescape_and_mask_mentions, False, LINEAR_GRID),
    "char_1_5_across_words": (
        {"word": SHIPPED["word"], "char": {**SHIPPED["char"], "analyzer": "char", "ngram_range": [1, 5]}},
        None,
        False,
        LINEAR_GRID,
    ),
    "nb_scaled": (SHIPPED, None, True, NB_GRID),
}


def features(train: list[str], other: list[str], settings: dict, preprocess):
    if preprocess:
        train, other = [preprocess(t) for t in train], [preprocess(t) for t in other]
    vectorizers = [tfidf._vectorizer(block) for block in settings.values()]
    fitted = scipy.sparse.hstack([v.fit_transform(train) for v in vectorizers], format="csr")
    return fitted, scipy.sparse.hstack([v.transform(other) for v in vectorizers], format="csr")


def nb_ratio(x, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """log((p / |p|_1) / (q / |q|_1)) of binarised feature counts in the positive (p) and negative (q) rows."""
    present = (x > 0).astype(np.float64)
    p = np.asarray(present[y == 1].sum(0)).ravel() + alpha
    q = np.asarray(present[y == 0].sum(0)).ravel() + alpha
    return np.log((p / p.sum()) / (q / q.sum()))


def f1_of(x_fit, y_fit, x_score, y_score, c: float, nb: bool, seed: int = 0) -> float:
    if nb:
        ratio = nb_ratio(x_fit, y_fit)
        x_fit, x_score = x_fit.multiply(ratio).tocsr(), x_score.multiply(ratio).tocsr()
    weights = dict(enumerate(class_weights(y_fit, 2)))
    model = LogisticRegression(C=c, class_weight=weights, max_iter=3000, random_state=seed).fit(x_fit, y_fit)
    return f1_score(y_score, model.predict(x_score))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/disaster_tweets/train.csv")
    parser.add_argument("variants", nargs="*", help=f"default: all of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    splits = load_splits(DataConfig(source=args.data))  # the study's split: 80/20, seed 42
    texts, labels = splits.train["text"].tolist(), splits.train["label"].to_numpy()
    val_texts, val_labels = splits.validation["text"].tolist(), splits.validation["label"].to_numpy()
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(texts, labels))
    print(f"{len(texts)} training rows (5-fold CV), {len(val_texts)} validation rows")
    for name in args.variants or VARIANTS:
        settings, preprocess, nb, grid = VARIANTS[name]
        started = time.perf_counter()
        fold_features = [
            (features([texts[i] for i in fit], [texts[i] for i in held], settings, preprocess), fit, held)
            for fit, held in folds
        ]
        cv = {
            c: np.mean([f1_of(xf, labels[fit], xh, labels[held], c, nb) for (xf, xh), fit, held in fold_features])
            for c in grid
        }
        chosen = max(cv, key=cv.get)
        x_train, x_val = features(texts, val_texts, settings, preprocess)
        val = f1_of(x_train, labels, x_val, val_labels, chosen, nb)
        per_c = " ".join(f"{c:g}:{score:.4f}" for c, score in cv.items())
        print(f"{name}: CV F1 by C {per_c} | C {chosen:g}, CV {cv[chosen]:.4f} -> val F1 {val:.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
