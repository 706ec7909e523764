"""Bootstrap intervals: right points, honest coverage, the same answer as resampling rows, paired comparisons."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from lorabench.core.errors import LorabenchError
from lorabench.core.uncertainty import Interval, bootstrap_metrics, mean_sd, paired_bootstrap

# A known binary process: P(label 1) = 0.4, P(predict 1 | label 1) = 0.75, P(predict 1 | label 0) = 0.15.
POSITIVE_SHARE, HIT_RATE, FALSE_ALARM_RATE = 0.4, 0.75, 0.15
TRUE_ACCURACY = POSITIVE_SHARE * HIT_RATE + (1 - POSITIVE_SHARE) * (1 - FALSE_ALARM_RATE)  # 0.81
# F1 = 2 TP / (predicted positives + actual positives), each share taken in the population
TRUE_F1 = (
    2
    * POSITIVE_SHARE
    * HIT_RATE
    / (POSITIVE_SHARE * HIT_RATE + (1 - POSITIVE_SHARE) * FALSE_ALARM_RATE + POSITIVE_SHARE)
)


def known_process(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(rows) < POSITIVE_SHARE).astype(int)
    positive_rate = np.where(labels == 1, HIT_RATE, FALSE_ALARM_RATE)
    return labels, (rng.random(rows) < positive_rate).astype(int)


def noisy_predictions(labels: np.ndarray, num_labels: int, error_rate: float, rng: np.random.Generator) -> np.ndarray:
    """The labels with a share `error_rate` of rows replaced by a random class (which may be the right one)."""
    wrong = rng.random(labels.size) < error_rate
    return np.where(wrong, rng.integers(0, num_labels, labels.size), labels)


def sklearn_metrics(labels, predictions, num_labels: int) -> dict[str, float]:
    average = {"average": "binary", "pos_label": 1} if num_labels == 2 else {"average": "macro"}
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=list(range(num_labels)), zero_division=0, **average
    )
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": accuracy_score(labels, predictions)}


@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_points_are_sklearns_metrics_and_lie_inside_their_intervals(num_labels):
    rng = np.random.default_rng(num_labels)
    labels = rng.integers(0, num_labels, 600)
    predictions = noisy_predictions(labels, num_labels, 0.4, rng)
    if num_labels == 5:
        predictions[predictions == 4] = 3  # a class never predicted: precision 0 by zero_division=0
    intervals = bootstrap_metrics(labels, predictions, num_labels)
    expected = sklearn_metrics(labels, predictions, num_labels)
    assert set(intervals) == set(expected)
    for name, interval in intervals.items():
        assert interval.point == pytest.approx(expected[name], abs=1e-12), name
        assert interval.low <= interval.point <= interval.high, name
        assert interval.high - interval.low > 0.01, name  # 600 rows leave real uncertainty


def test_intervals_cover_the_true_value_about_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    data_sets, rows = 300, 400
    covered = {"accuracy": 0, "f1": 0}
    for seed in range(data_sets):
        labels, predictions = known_process(rows, rng)
        intervals = bootstrap_metrics(labels, predictions, num_labels=2, seed=seed)
        covered["accuracy"] += intervals["accuracy"].contains(TRUE_ACCURACY)
        covered["f1"] += intervals["f1"].contains(TRUE_F1)
    for name, count in covered.items():
        assert 0.88 <= count / data_sets <= 0.99, (name, count / data_sets)


def test_drawing_cell_counts_gives_the_intervals_of_resampling_rows():
    """The multinomial shortcut must agree with the textbook bootstrap that resamples row indices."""
    rng = np.random.default_rng(7)
    labels, predictions = known_process(2000, rng)
    resamples = 4000
    rows = rng.integers(0, labels.size, (resamples, labels.size))
    resampled_labels, resampled_predictions = labels[rows], predictions[rows]
    true_positives = ((resampled_labels == 1) & (resampled_predictions == 1)).sum(axis=1)
    textbook = {
        "accuracy": (resampled_labels == resampled_predictions).mean(axis=1),
        "f1": 2 * true_positives / ((resampled_labels == 1).sum(axis=1) + (resampled_predictions == 1).sum(axis=1)),
    }
    intervals = bootstrap_metrics(labels, predictions, num_labels=2, resamples=resamples)
    for name, values in textbook.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert intervals[name].low == pytest.approx(low, abs=0.004), name
        assert intervals[name].high == pytest.approx(high, abs=0.004), name


def test_a_lower_level_gives_a_narrower_interval():
    labels, predictions = known_process(1000, np.random.default_rng(3))
    wide = bootstrap_metrics(labels, predictions, 2, level=0.95)["f1"]
    narrow = bootstrap_metrics(labels, predictions, 2, level=0.5)["f1"]
    assert wide.low < narrow.low <= narrow.point <= narrow.high < wide.high


@pytest.mark.parametrize("num_labels", [2, 4])
def test_paired_comparison_finds_the_worse_model(num_labels):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, num_labels, 1500)
    better = noisy_predictions(labels, num_labels, 0.1, rng)
    worse = noisy_predictions(labels, num_labels, 0.4, rng)
    worse_first = paired_bootstrap(labels, worse, better, num_labels)
    expected = sklearn_metrics(labels, worse, num_labels)["f1"] - sklearn_metrics(labels, better, num_labels)["f1"]
    assert worse_first.difference == pytest.approx(expected, abs=1e-12)
    assert worse_first.interval.point == worse_first.difference
    assert worse_first.interval.high < 0
    assert worse_first.prob_worse == 1.0
    assert not worse_first.tied
    better_first = paired_bootstrap(labels, better, worse, num_labels)
    assert better_first.difference == pytest.approx(-worse_first.difference, abs=1e-12)
    assert better_first.prob_worse == 0.0


def test_identical_predictions_are_tied_with_difference_zero():
    labels, predictions = known_process(800, np.random.default_rng(5))
    result = paired_bootstrap(labels, predictions, predictions.copy(), 2, metric="accuracy")
    assert result.difference == 0.0
    assert result.interval == Interval(0.0, 0.0, 0.0)
    assert result.tied
    assert result.prob_worse == 0.0


def test_a_small_gap_on_few_rows_is_a_tie():
    """Two models that differ on 4 of 300 rows, 3 against a: the gap is noise, yet a loses in most resamples."""
    labels, predictions_b = known_process(300, np.random.default_rng(8))
    predictions_a = predictions_b.copy()
    right_in_b = np.flatnonzero(predictions_b == labels)[:3]
    wrong_in_b = np.flatnonzero(predictions_b != labels)[:1]
    predictions_a[right_in_b] = 1 - predictions_a[right_in_b]
    predictions_a[wrong_in_b] = 1 - predictions_a[wrong_in_b]
    result = paired_bootstrap(labels, predictions_a, predictions_b, 2, metric="accuracy")
    assert result.difference == pytest.approx(-2 / 300)
    assert result.tied
    assert 0.5 < result.prob_worse < 1.0


def test_ten_thousand_rows_and_a_thousand_resamples_take_well_under_a_second():
    labels, predictions = known_process(10_000, np.random.default_rng(9))
    start = time.perf_counter()
    bootstrap_metrics(labels, predictions, 2, resamples=1000)
    single = time.perf_counter() - start
    start = time.perf_counter()
    paired_bootstrap(labels, predictions, 1 - predictions, 2, resamples=1000)
    paired = time.perf_counter() - start
    print(f"bootstrap_metrics {single * 1000:.1f} ms, paired_bootstrap {paired * 1000:.1f} ms")
    assert single < 2.0
    assert paired < 2.0


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    labels, predictions = known_process(500, np.random.default_rng(4))
    first = bootstrap_metrics(labels, predictions, 2, seed=1)
    assert bootstrap_metrics(labels, predictions, 2, seed=1) == first
    assert bootstrap_metrics(labels, predictions, 2, seed=2)["f1"] != first["f1"]
    other = 1 - predictions
    assert paired_bootstrap(labels, predictions, other, 2, seed=1) == paired_bootstrap(
        labels, predictions, other, 2, seed=1
    )


def test_mean_sd_uses_the_sample_standard_deviation():
    scores = [0.80, 0.82, 0.87]
    mean, sd = mean_sd(scores)
    assert mean == pytest.approx(statistics.mean(scores))
    assert sd == pytest.approx(statistics.stdev(scores))
    assert mean_sd([0.8]) == (0.8, 0.0)
    with pytest.raises(ValueError):
        mean_sd([])


def test_bad_requests_are_refused():
    labels = np.array([0, 1, 1, 0])
    with pytest.raises(LorabenchError, match="unknown metric 'auc'"):
        paired_bootstrap(labels, labels, labels, 2, metric="auc")
    with pytest.raises(ValueError, match="one length"):
        bootstrap_metrics(labels, labels[:3], 2)
    with pytest.raises(ValueError, match="class ids"):
        bootstrap_metrics(labels, labels + 1, 2)
    with pytest.raises(ValueError, match="level"):
        bootstrap_metrics(labels, labels, 2, level=95)
