"""How `tfidf` (and the probe's head) fits its logistic regression: the solver shipped (newton-cg) against
scikit-learn's default (lbfgs), on one labelled file: the C that 5-fold cross-validation picks on the training
split, the CPU seconds that choice and the final fit take, and validation F1 (macro for 3+ classes).

    python bench/tfidf_solver.py --data ../shared/data/disaster_tweets/train.csv
    python bench/tfidf_solver.py --data bbc/train.csv --text-column body --label-column category

Prints one line per solver.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import scipy.sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from lorabench.core.config import DataConfig, TrainSettings
from lorabench.data.sources import load_splits
from lorabench.data.statistics import class_weights
from lorabench.models import tfidf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="target")
    args = parser.parse_args()
    data = DataConfig(source=args.data, text_column=args.text_column, label_column=args.label_column)
    splits = load_splits(data)
    labels = splits.train["label"].to_numpy()
    classes = len(splits.label_names)
    vectorizers, features = tfidf._fit_features(splits.train["text"].tolist())
    validation = scipy.sparse.hstack(
        [vectorizer.transform(splits.validation["text"].tolist()) for vectorizer in vectorizers.values()], format="csr"
    )
    weights = class_weights(labels, classes)
    print(f"{args.data}: {len(labels)} training rows, {len(splits.validation)} validation rows, {classes} classes")
    for solver in ("lbfgs", "newton-cg"):

        def regression(c, class_weight, seed, solver=solver):
            return LogisticRegression(
                C=c, class_weight=dict(enumerate(class_weight)), solver=solver, max_iter=2000, random_state=seed
            )

        started = time.process_time()
        with mock.patch.object(tfidf, "_regression", regression):
            model, chosen = tfidf.fit_regression(features, labels, weights, TrainSettings().seed)
        seconds = time.process_time() - started
        predicted = model.predict(validation)
        f1 = f1_score(splits.validation["label"], predicted, average="binary" if classes == 2 else "macro")
        print(f"{solver:10s} C {chosen['C']:<5} CPU {seconds:6.1f} s  val F1 {f1:.4f}")


if __name__ == "__main__":
    main()
