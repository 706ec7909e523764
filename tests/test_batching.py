"""Token-budget batches: every row once per epoch, within the budget, reproducible from (seed, epoch); and the
fast defaults still train."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lorabench.data.batching import epoch_batches


def _tweet_like_lengths(rows: int = 6090, seed: int = 0) -> np.ndarray:
    """Lengths spread like tokenized tweets (3 to 84 tokens, median about 33) plus a few over-long rows."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(33, 13, rows).round(), 3, 84).astype(np.int64)
    lengths[[5, 17]] = 5000  # longer than any budget below: each must form a batch alone
    return lengths


@pytest.mark.parametrize("budget", [256, 2048, 4096])
def test_every_row_exactly_once_and_no_batch_over_budget(budget):
    lengths = _tweet_like_lengths()
    for epoch in (1, 2, 3):
        batches = epoch_batches(lengths, 8, seed=0, epoch=epoch, batch_tokens=budget)
        rows = np.concatenate(batches)
        assert len(rows) == len(lengths) and sorted(rows.tolist()) == list(range(len(lengths)))
        for batch in batches:
            padded = len(batch) * lengths[batch].max()
            assert padded <= budget or len(batch) == 1  # only a single over-long row may exceed the budget
        assert sum(1 for batch in batches if lengths[batch].max() > budget) == 2


def test_sorted_budget_batches_carry_almost_no_padding():
    lengths = _tweet_like_lengths()
    lengths[[5, 17]] = 40
    batches = epoch_batches(lengths, 8, seed=0, epoch=1, batch_tokens=2048)
    padded = sum(len(batch) * lengths[batch].max() for batch in batches)
    real = lengths.sum()
    assert padded / real < 1.03
    # while the study's random 8-row batches pad about half as much again as they hold
    random_batches = epoch_batches(lengths, 8, seed=0, epoch=1)
    assert sum(len(b) * lengths[b].max() for b in random_batches) / real > 1.3
    # and every budget batch is nearly full: the step does a full budget of work
    assert np.median([len(b) * lengths[b].max() for b in batches]) > 0.95 * 2048


def test_batches_are_a_function_of_seed_and_epoch():
    lengths = _tweet_like_lengths(500)
    first = epoch_batches(lengths, 8, seed=3, epoch=2, batch_tokens=512)
    again = epoch_batches(lengths, 8, seed=3, epoch=2, batch_tokens=512)
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    next_epoch = epoch_batches(lengths, 8, seed=3, epoch=3, batch_tokens=512)
    other_seed = epoch_batches(lengths, 8, seed=4, epoch=2, batch_tokens=512)
    as_sets = lambda batches: {frozenset(b.tolist()) for b in batches}  # noqa: E731
    # a new epoch draws new batch members (ties of equal length shuffled) and a new batch order; only batches
    # forced by rare lengths (here the two over-long rows alone, and the extremes) can repeat
    assert len(as_sets(first) & as_sets(next_epoch)) <= len(first) // 10
    assert [b.tolist() for b in first] != [b.tolist() for b in next_epoch]
    assert as_sets(first) != as_sets(other_seed)
    # the same number of batches every epoch (the same lengths are cut), so steps per epoch are fixed
    assert {len(epoch_batches(lengths, 8, 3, e, 512)) for e in range(1, 6)} == {len(first)}


def test_row_mode_is_the_fixed_size_random_batching():
    lengths = _tweet_like_lengths(100)
    batches = epoch_batches(lengths, 8, seed=1, epoch=4)
    assert [len(b) for b in batches] == [8] * 12 + [4]
    expected = np.random.default_rng([1, 4]).permutation(100)
    assert np.concatenate(batches).tolist() == expected.tolist()


def test_small_data_sets_keep_enough_steps_per_epoch():
    from lorabench.data.batching import MIN_STEPS_PER_EPOCH

    lengths = _tweet_like_lengths(400)
    lengths[[5, 17]] = 30
    batches = epoch_batches(lengths, 8, seed=0, epoch=1, batch_tokens=2048)
    # 400 tweets are about 13,000 tokens: the budget shrinks to 1/50 of them instead of 7 batches of 2048
    assert len(batches) >= MIN_STEPS_PER_EPOCH
    assert max(len(b) * lengths[b].max() for b in batches) <= lengths.sum() // MIN_STEPS_PER_EPOCH
    assert sorted(np.concatenate(batches).tolist()) == list(range(400))


def test_a_launch_with_a_larger_nominal_budget_trains_the_same_batches_where_the_floor_binds():
    """Two processes with one process's per-process budget ask for twice the global budget; when small data
    lowers both to the same floor, the batches, and hence lr, are those of the single process."""
    from lorabench.data.batching import step_budget

    lengths = _tweet_like_lengths(192)
    assert step_budget(lengths, 2 * 512) == step_budget(lengths, 512) < 512
    one, two = (epoch_batches(lengths, 8, 3, 1, step_budget(lengths, budget)) for budget in (512, 2 * 512))
    assert [b.tolist() for b in one] == [b.tolist() for b in two]


def test_empty_split_gives_no_batches():
    assert epoch_batches(np.zeros(0, dtype=np.int64), 8, 0, 1, 2048) == []


def _keyword_data(directory, rows_per_class: int = 150):
    """Two classes told apart by one word among random filler: a tiny model must learn it to score well."""
    rng = np.random.default_rng(0)
    filler = ["the", "a", "people", "road", "today", "news", "city", "we", "saw", "there", "after", "big"]
    records = []
    for label, word in ((1, "fire"), (0, "sunny")):
        for _ in range(rows_per_class):
            words = list(rng.choice(filler, size=rng.integers(2, 14))) + [word]
            rng.shuffle(words)
            records.append({"text": " ".join(words), "target": label})
    pd.DataFrame(records).sample(frac=1, random_state=0).to_csv(directory / "keyword.csv", index=False)
    return directory / "keyword.csv"


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_token_budget_training_learns(packing, tiny_models, tmp_path):
    from lorabench.api import resolve_config, train

    source = _keyword_data(tmp_path)
    # the default batching mode and budget (lowered to 1/50 of the 240 training rows' tokens: 50 steps an epoch);
    # the lr is chosen for those small batches, so it is not scaled down with them
    config = resolve_config(
        str(tiny_models["roberta"]),
        overrides={
            "data": {"source": str(source)},
            "train": {"epochs": 6, "lr": 3e-3, "max_length": 48, "packing": packing, "scale_lr_with_batch": False},
        },
    )
    assert config.train.batch_tokens == 2048 and config.train.gradient_checkpointing == "auto"
    summary = train(config, tmp_path / "run")
    assert summary.effective_batch["tokens"] < 2048 and summary.lr == 3e-3
    losses = pd.read_json(tmp_path / "run" / "metrics.jsonl", lines=True)["train_loss"].tolist()
    assert losses[-1] < losses[0]
    assert summary.val.accuracy > 0.9


def test_default_config_uses_token_budget_batches():
    from lorabench.core.config import TrainSettings

    settings = TrainSettings()
    assert settings.batch_tokens == 2048 and settings.packing is False
    assert settings.gradient_checkpointing == "auto"
    assert TrainSettings(batch_tokens=0).batch_tokens == 0  # the study's fixed-size batches


def test_checkpointing_turns_on_only_when_memory_is_short(tiny_models, small_data, tmp_path, monkeypatch):
    from lorabench.api import resolve_config
    from lorabench.core.storage import RunDir
    from lorabench.training import lora_recipe as train_module

    def fit_with_free_memory(free_bytes, name):
        monkeypatch.setattr(train_module, "free_memory_bytes", lambda device: free_bytes)
        config = resolve_config(
            str(tiny_models["llama"]),
            overrides={
                "data": {"source": str(small_data), "max_train_rows": 32},
                "train": {"epochs": 1, "max_length": 32, "batch_tokens": 256},
            },
        )
        prepared = train_module.prepare(config)
        run = RunDir(tmp_path / name)
        run.prepare(config, resume=False)
        train_module.fit(prepared, run)
        return prepared.model.get_base_model().is_gradient_checkpointing

    assert fit_with_free_memory(1e12, "plenty") is False
    assert fit_with_free_memory(1e3, "short") is True
