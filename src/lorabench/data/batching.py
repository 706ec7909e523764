"""Stage 2b: which rows form each training step's batch, and in which order scoring visits them.

Batches are index arrays drawn from (seed, epoch) alone, so a resumed run and a run under N processes train on
exactly the batches of an uninterrupted single-process run.
"""

from __future__ import annotations

import numpy as np

# Token-budget batches are never so large that an epoch has fewer optimizer steps than this: a small data set
# keeps learning like the study's small batches (minilm on 400 tweets: 7 steps of 2048 tokens per epoch learn
# nothing in 2 epochs), a large one gets the full budget (6090 tweets: about 100 steps of 2048 tokens).
MIN_STEPS_PER_EPOCH = 50


def step_budget(lengths: np.ndarray, batch_tokens: int) -> int:
    """The token budget batches actually get: `batch_tokens`, lowered on small data sets so that an epoch still
    takes MIN_STEPS_PER_EPOCH optimizer steps."""
    return min(batch_tokens, int(lengths.sum()) // MIN_STEPS_PER_EPOCH)


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, batch_tokens: int | None = None
) -> list[np.ndarray]:
    """Row indices for one training epoch, drawn from (seed, epoch) alone so a resumed run sees exactly the
    batches an uninterrupted one would.

    With `batch_tokens`, rows are sorted by length (ties in a random order) and cut into batches whose padded
    size, rows x longest row, stays within the budget (`step_budget`: lowered for small data sets); the batch
    order is then shuffled. Batches of one length
    carry almost no padding, and short texts share a batch with many others, so every step does a full
    budget of useful work. A row longer than the budget forms a batch alone. Every epoch sorts the same
    lengths, so the number of batches is the same in every epoch. Without `batch_tokens`: a fresh
    permutation cut into `batch_size` rows (the study's fixed-size batches).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if batch_tokens is None:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    budget = step_budget(lengths, batch_tokens)
    order = order[np.argsort(lengths[order], kind="stable")]
    batches, start = [], 0
    for end, row in enumerate(order):
        # sorted ascending, so the row joining the batch is its longest: the padded size is rows * its length
        if end > start and (end - start + 1) * lengths[row] > budget:
            batches.append(order[start:end])
            start = end
    if len(order):
        batches.append(order[start:])
    return [batches[i] for i in rng.permutation(len(batches))]


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches of similar length, longest first, so padding is minimal and OOM shows up early."""
    order = np.argsort(-lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
