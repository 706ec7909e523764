"""How sure each result of a comparison is: bootstrap intervals of every metric, a paired bootstrap of each model
against the best, and the spread over training seeds.

A validation split of a few hundred or thousand rows moves F1 by a point or more from sample to sample, so two
models a point apart may not differ at all. Intervals and the paired test use the first seed's predictions (the
run the report's charts show); the best model is the one with the highest mean validation F1 over seeds.
"""

from __future__ import annotations

from lorabench.core.uncertainty import METRICS, bootstrap_metrics, mean_sd, paired_bootstrap
from lorabench.workflows.results import SPLITS, ModelResult, same_rows
from lorabench.workflows.verdict import best_index

RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def mean_val_f1(result: ModelResult) -> float:
    return mean_sd([summary.val.f1 for summary in result.summaries])[0]


def best_result(results: list[ModelResult]) -> ModelResult | None:
    """The trained model with the highest mean validation F1 (the first of equals), or None."""
    trained = [result for result in results if result.ok]
    return trained[best_index([mean_val_f1(result) for result in trained])] if trained else None


def seed_columns(result: ModelResult) -> dict[str, float]:
    """`<split>_<metric>_mean` and `_sd` over the model's seeds (sd 0.0 for one seed)."""
    columns = {}
    for split in SPLITS:
        scores = [getattr(summary, split) for summary in result.summaries]
        if any(metrics is None for metrics in scores):
            continue
        for metric in METRICS:
            mean, sd = mean_sd([getattr(metrics, metric) for metrics in scores])
            columns[f"{split}_{metric}_mean"], columns[f"{split}_{metric}_sd"] = mean, sd
    return columns


def interval_columns(result: ModelResult) -> dict[str, float]:
    """`<split>_<metric>_low` and `_high`: 95% bootstrap percentile interval of each metric on the split's rows."""
    columns = {}
    for split in result.labelled_splits():
        labels, decisions = result.decisions(split)
        intervals = bootstrap_metrics(
            labels, decisions, len(result.summary.label_names), resamples=RESAMPLES, seed=BOOTSTRAP_SEED
        )
        for metric, interval in intervals.items():
            columns[f"{split}_{metric}_low"], columns[f"{split}_{metric}_high"] = interval.low, interval.high
    return columns


def paired_columns(result: ModelResult, best: ModelResult) -> dict[str, float | bool]:
    """`<split>_tied_with_best` (the 95% interval of F1 minus the best's F1 holds 0) and `<split>_prob_worse`
    (the share of resamples in which it scores below the best), on the same resampled rows; left out for a
    split whose rows differ from the best model's."""
    columns = {}
    for split in result.labelled_splits():
        if split not in best.predictions or not same_rows(result.predictions[split], best.predictions[split]):
            continue
        labels, decisions = result.decisions(split)
        paired = paired_bootstrap(
            labels,
            decisions,
            best.decisions(split)[1],
            len(result.summary.label_names),
            metric="f1",
            resamples=RESAMPLES,
            seed=BOOTSTRAP_SEED,
        )
        columns[f"{split}_tied_with_best"], columns[f"{split}_prob_worse"] = paired.tied, paired.prob_worse
    return columns


def uncertainty_columns(results: list[ModelResult]) -> dict[str, dict[str, float | bool]]:
    """Interval, paired-test and seed columns of every trained model, by model name."""
    best = best_result(results)
    return {
        result.name: {**interval_columns(result), **paired_columns(result, best), **seed_columns(result)}
        for result in results
        if result.ok
    }
