"""The split and class weights of the study, on the real disaster tweets."""

import pytest

from lorabench.core.config import DataConfig
from lorabench.data.sources import class_weights, describe, load_splits


def test_split_matches_datasets_train_test_split_and_the_study(tweets_dir):
    splits = load_splits(DataConfig(source=str(tweets_dir)))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (6090, 1523, 3263)
    assert splits.train.iloc[0]["id"] == "5285"  # as Dataset.train_test_split(train_size=0.8, seed=42) draws it
    assert not splits.test_has_labels
    weights = class_weights(splits.train["label"].to_numpy(), splits.num_labels)
    assert weights == pytest.approx([0.8775, 1.1622], abs=1e-4)  # n / (2 * count) on the training split


def test_describe_reports_the_study_statistics(tweets_dir):
    stats = describe(DataConfig(source=str(tweets_dir)))
    assert stats["missing"]["train"]["keyword"] == 61 and stats["missing"]["train"]["location"] == 2533
    assert max(entry["max_chars"] for entry in stats["splits"].values()) == 157
    assert stats["splits"]["train"]["class_counts"] == {"0": 3470, "1": 2620}
