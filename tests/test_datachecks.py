"""Text checks: duplicates, near duplicates, conflicting labels and split overlaps, counted on a crafted frame and
on the real disaster tweets; a split that keeps near duplicates together; resolving conflicting labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lorabench.core.errors import LorabenchError
from lorabench.data.checks import (
    TextGroups,
    check_texts,
    grouped_split_indices,
    normalise_text,
    normalise_texts,
    resolve_conflicts,
)
from lorabench.data.splitting import split_indices

FIRE = "Fire in the city http://t.co/abc"
CAT = "Just a cat video"


def crafted_splits() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Labelled rows: FIRE 3 times (2 train, 1 validation) plus a variant, CAT twice with both labels plus a
    lower-case variant in validation, and two forms of 'flood warning now' labelled 1 and 0."""
    train = pd.DataFrame(
        {
            "text": [FIRE, FIRE, "fire in the CITY https://t.co/xyz", CAT, CAT]
            + ["@bob flood warning   now", "Flood warning now www.example.com", "Nice day"],
            "target": [1, 1, 1, 0, 1, 1, 0, 0],
        }
    )
    validation = pd.DataFrame({"text": [FIRE, "just a cat video", "Unique validation text"], "target": [1, 0, 1]})
    test = pd.DataFrame({"text": ["Nice day", "Nice day", "nice   DAY @x", FIRE, "Something new"]})
    return train, validation, test


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Check THIS  out http://t.co/abc @User!", "check this out !"),
        ("RT @news_bot: Flood\nwarning https://x.y/z?q=1 www.example.com/a", "rt : flood warning"),
        ("write to me@example.com", "write to me@example.com"),
        ("   ", ""),
    ],
)
def test_normalise_text_drops_case_links_mentions_and_extra_whitespace(text, expected):
    assert normalise_text(text) == expected
    assert normalise_texts(pd.Series([text], index=[7])).to_dict() == {7: expected}


def test_crafted_frame_counts_are_exact():
    train, validation, test = crafted_splits()
    checks = check_texts(train, validation, test)
    assert checks.labelled_rows == 11
    assert checks.duplicates == TextGroups(texts=2, rows=5, examples=[FIRE, CAT])
    assert checks.duplicates_normalised == TextGroups(
        texts=3, rows=9, examples=["fire in the city", "just a cat video", "flood warning now"]
    )
    assert checks.conflicts == TextGroups(texts=1, rows=2, examples=[CAT])
    assert checks.conflicts_normalised == TextGroups(
        texts=2, rows=5, examples=["just a cat video", "flood warning now"]
    )
    assert checks.validation_in_train == TextGroups(texts=1, rows=1, examples=[FIRE])
    assert checks.validation_in_train_normalised == TextGroups(
        texts=2, rows=2, examples=["fire in the city", "just a cat video"]
    )
    assert checks.test_in_labelled == TextGroups(texts=2, rows=3, examples=["Nice day", FIRE])
    assert checks.test_in_labelled_normalised == TextGroups(texts=2, rows=4, examples=["nice day", "fire in the city"])
    assert json.loads(json.dumps(checks.to_dict()))["conflicts"] == {"texts": 1, "rows": 2, "examples": [CAT]}


def test_without_validation_and_test_only_the_training_data_is_checked():
    train, _, _ = crafted_splits()
    checks = check_texts(train, None, None, examples=1)
    assert checks.labelled_rows == 8
    assert checks.duplicates == TextGroups(texts=2, rows=4, examples=[FIRE])  # FIRE and CAT, 2 rows each: text order
    assert checks.validation_in_train is None and checks.validation_in_train_normalised is None
    assert checks.test_in_labelled is None and checks.test_in_labelled_normalised is None


def test_long_examples_are_shortened_and_missing_texts_ignored():
    long_text = "word " * 100
    train = pd.DataFrame({"text": [long_text, long_text, None, None], "target": [0, 0, 1, 1]})
    checks = check_texts(train, None, None)
    assert checks.labelled_rows == 2
    (example,) = checks.duplicates.examples
    assert len(example) == 160 and example.endswith("…") and long_text.startswith(example[:-1])


def test_a_missing_column_is_named():
    train, validation, _ = crafted_splits()
    with pytest.raises(LorabenchError, match="validation data has no column 'target'"):
        check_texts(train, validation.drop(columns="target"), None)


@pytest.fixture(scope="module")
def tweets(tweets_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(tweets_dir / "train.csv"), pd.read_csv(tweets_dir / "test.csv")


def test_real_data_counts_with_the_study_split(tweets):
    train, test = tweets
    train_rows, validation_rows = split_indices(len(train), train_size=0.8, seed=42)
    checks = check_texts(train.iloc[train_rows], train.iloc[validation_rows], test)
    assert checks.labelled_rows == 7613
    assert (checks.duplicates.texts, checks.duplicates.rows) == (69, 179)
    assert (checks.conflicts.texts, checks.conflicts.rows) == (18, 55)
    assert (checks.duplicates_normalised.texts, checks.duplicates_normalised.rows) == (318, 1019)
    assert (checks.conflicts_normalised.texts, checks.conflicts_normalised.rows) == (72, 256)
    assert (checks.validation_in_train.rows, checks.validation_in_train.texts) == (37, 34)
    assert (checks.validation_in_train_normalised.rows, checks.validation_in_train_normalised.texts) == (189, 142)
    assert (checks.test_in_labelled.rows, checks.test_in_labelled.texts) == (78, 68)
    assert (checks.test_in_labelled_normalised.rows, checks.test_in_labelled_normalised.texts) == (424, 280)


def assert_groups_on_one_side(texts: list[str], train_rows: np.ndarray, validation_rows: np.ndarray) -> None:
    assert np.array_equal(np.sort(np.concatenate([train_rows, validation_rows])), np.arange(len(texts)))
    normalised = normalise_texts(pd.Series(texts))
    assert not set(normalised.iloc[train_rows]) & set(normalised.iloc[validation_rows])


def test_grouped_split_keeps_each_normalised_text_on_one_side():
    texts = [FIRE, FIRE.upper(), "@a " + CAT, CAT] + [f"text {i}" for i in range(16)]
    train_rows, validation_rows = grouped_split_indices(texts, train_size=0.75, seed=1)
    assert_groups_on_one_side(texts, train_rows, validation_rows)
    # 20 rows in 18 groups, the largest of 2 rows: the shuffled prefix comes within a row of 15
    assert abs(len(train_rows) - 15) <= 1
    again = grouped_split_indices(texts, train_size=0.75, seed=1)
    assert np.array_equal(again[0], train_rows) and np.array_equal(again[1], validation_rows)
    assert not np.array_equal(grouped_split_indices(texts, train_size=0.75, seed=2)[0], train_rows)
    with pytest.raises(LorabenchError, match="cannot split 1 distinct"):
        grouped_split_indices([CAT, CAT.lower()], train_size=0.8, seed=0)


def test_grouped_split_of_the_real_data_is_close_to_80_20(tweets):
    texts = tweets[0]["text"].tolist()
    train_rows, validation_rows = grouped_split_indices(texts, train_size=0.8, seed=42)
    assert_groups_on_one_side(texts, train_rows, validation_rows)
    assert abs(len(train_rows) - 6090) <= 5 and len(train_rows) + len(validation_rows) == 7613


def conflicting_frame() -> pd.DataFrame:
    """a: 2 x 0 and 1 x 1 (majority 0); b: 1 and 0 (a tie); c: twice 1 (no conflict); d: once;
    e: 2, 1, 1, 0 (majority 1)."""
    return pd.DataFrame(
        {
            "text": ["a", "b", "a", "c", "e", "a", "b", "d", "c", "e", "e", "e"],
            "label": [0, 1, 1, 1, 2, 0, 0, 0, 1, 1, 1, 0],
        },
        index=[f"row{i}" for i in range(12)],
    )


def test_resolve_conflicts_keep_leaves_the_frame_as_it_is():
    frame = conflicting_frame()
    resolved, note = resolve_conflicts(frame, "text", "label", "keep")
    assert resolved is frame
    assert note == "kept 9 rows of 3 texts with conflicting labels"


def test_resolve_conflicts_drop_removes_every_row_of_a_conflicting_text():
    resolved, note = resolve_conflicts(conflicting_frame(), "text", "label", "drop")
    assert resolved.index.tolist() == ["row3", "row7", "row8"]
    assert resolved["text"].tolist() == ["c", "d", "c"]
    assert note == "dropped 9 rows of 3 texts with conflicting labels"


def test_resolve_conflicts_majority_relabels_and_drops_ties():
    frame = conflicting_frame()
    resolved, note = resolve_conflicts(frame, "text", "label", "majority")
    expected = frame.drop(index=["row1", "row6"])  # b's labels tie
    expected.loc[expected["text"] == "a", "label"] = 0
    expected.loc[expected["text"] == "e", "label"] = 1
    pd.testing.assert_frame_equal(resolved, expected)
    assert note == (
        "9 rows of 3 texts with conflicting labels: 2 texts got their majority label (3 rows changed), "
        "1 texts whose labels tie were dropped (2 rows)"
    )
    assert frame["label"].tolist() == conflicting_frame()["label"].tolist()  # the input is left alone


def test_resolve_conflicts_without_conflicts_and_with_a_bad_mode():
    frame = pd.DataFrame({"text": ["x", "x", "y"], "label": [1, 1, 0]})
    for mode in ("keep", "majority", "drop"):
        resolved, note = resolve_conflicts(frame, "text", "label", mode)
        assert resolved is frame and note == "no texts with conflicting labels"
    with pytest.raises(LorabenchError, match="unknown conflict mode 'vote'"):
        resolve_conflicts(frame, "text", "label", "vote")
