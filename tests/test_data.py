"""The split and class weights of the study, on the real disaster tweets; the data checks `lorabench data`
reports, and the split options `duplicates` and `conflicts`."""

import json

import pandas as pd
import pytest

from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.data.checks import normalise_texts
from lorabench.data.sources import load_splits
from lorabench.data.statistics import class_weights, describe


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


FIRE = "Fire in the city http://t.co/abc"
CAT = "Just a cat video"


@pytest.fixture
def crafted_dir(tmp_path):
    """train / validation / test files with copies, near copies, one text labelled both ways and shared texts."""
    train = [FIRE, FIRE, "fire in the CITY https://t.co/xyz", CAT, CAT, "Nice day", "Flood warning", "Storm now"]
    validation = [FIRE, "just a cat video", "Unique text", "Another one"]
    files = {
        "train": pd.DataFrame({"text": train, "target": [1, 1, 1, 0, 1, 0, 1, 1]}),
        "validation": pd.DataFrame({"text": validation, "target": [1, 0, 1, 0]}),
        "test": pd.DataFrame({"text": ["Nice day", FIRE, "Something new"]}),
    }
    for split, frame in files.items():
        frame.insert(0, "id", [f"{split}{i}" for i in range(len(frame))])
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    return tmp_path


def counts(checks: dict, name: str) -> tuple[int, int]:
    return checks[name]["texts"], checks[name]["rows"]


def test_data_json_counts_the_checks_of_a_crafted_split(cli, crafted_dir):
    result = cli("data", "--data", crafted_dir, "--json")
    assert result.code == 0, result.stderr
    stats = json.loads(result.stdout)
    checks = stats["checks"]
    assert checks["labelled_rows"] == 12
    assert counts(checks, "duplicates") == (2, 5)  # FIRE 3 times, CAT twice
    assert counts(checks, "duplicates_normalised") == (2, 7)  # + the FIRE variant, + the lower-case cat
    assert counts(checks, "conflicts") == (1, 2) and checks["conflicts"]["examples"] == [CAT]
    assert counts(checks, "conflicts_normalised") == (1, 3)
    assert counts(checks, "validation_in_train") == (1, 1)
    assert counts(checks, "validation_in_train_normalised") == (2, 2)
    assert counts(checks, "test_in_labelled") == counts(checks, "test_in_labelled_normalised") == (2, 2)
    split = stats["split"]
    assert (split["validation_rows_in_train"], split["validation_rows_in_train_normalised"]) == (1, 2)
    assert split["grouped_rows"] is None  # the data brings its own validation split

    dropped = json.loads(cli("data", "--data", crafted_dir, "--json", "--conflicts", "drop").stdout)
    assert dropped["splits"]["train"]["rows"] == 6
    assert dropped["notes"] == ["dropped 2 rows of 1 texts with conflicting labels"]
    assert counts(dropped["checks"], "conflicts") == (0, 0)

    table = cli("data", "--data", crafted_dir)
    assert "texts with conflicting labels" in table.stdout
    assert "validation: 2 of 4 rows have a near duplicate in train (1 the exact text)" in table.stdout


def test_grouped_split_puts_no_normalised_text_on_both_sides(tweets_dir):
    kept = load_splits(DataConfig(source=str(tweets_dir)))
    grouped = load_splits(DataConfig(source=str(tweets_dir), duplicates="group"))

    def shared(splits) -> set[str]:
        return set(normalise_texts(splits.train["text"])) & set(normalise_texts(splits.validation["text"]))

    assert len(shared(kept)) == 142  # the study's row split
    assert shared(grouped) == set()
    assert (len(grouped.train), len(grouped.validation)) == (6090, 1523)
    assert set(grouped.train["id"]) != set(kept.train["id"])


def test_data_reports_the_real_tweets_duplicates_and_conflicts(cli, tweets_dir):
    result = cli("data", "--data", tweets_dir, "--json")
    assert result.code == 0, result.stderr
    stats = json.loads(result.stdout)
    assert counts(stats["checks"], "duplicates") == (69, 179)
    assert counts(stats["checks"], "conflicts") == (18, 55)
    assert stats["split"]["validation_rows_in_train_normalised"] == 189
    assert stats["split"]["grouped_rows"] == {"train": 6090, "validation": 1523}


def test_text_template_builds_every_split_s_texts_with_missing_values_empty(tmp_path):
    train = pd.DataFrame({
        "keyword": ["fire", None, "flood", "storm", None, "cat"],
        "text": ["Fire downtown", "Nice day", "Water rising", "Wind now", "Just chilling", "Cat video"],
        "target": [1, 0, 1, 1, 0, 0],
    })  # fmt: skip
    train.to_csv(tmp_path / "train.csv", index=False)
    train.iloc[:2].drop(columns="target").to_csv(tmp_path / "test.csv", index=False)
    splits = load_splits(DataConfig(source=str(tmp_path), text_template="{keyword}: {text}", split_seed=0))
    built = pd.concat([splits.train, splits.validation])["text"]
    assert sorted(built) == sorted(["fire: Fire downtown", ": Nice day", "flood: Water rising", "storm: Wind now",
                                    ": Just chilling", "cat: Cat video"])  # fmt: skip
    assert splits.test["text"].tolist() == ["fire: Fire downtown", ": Nice day"]


def test_text_template_refuses_unknown_columns_by_name_and_a_template_without_columns(tmp_path):
    pd.DataFrame({"text": ["a b", "c d", "e f", "g h"], "target": [0, 1, 0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LorabenchError, match=r"^data.text_template names columns that train data does not have: "
                                             r"keyword, place \(columns: text, target\)$"):  # fmt: skip
        load_splits(DataConfig(source=str(tmp_path / "t.csv"), text_template="{keyword} {place}: {text}"))
    with pytest.raises(LorabenchError, match="must name its columns in braces"):
        load_splits(DataConfig(source=str(tmp_path / "t.csv"), text_template="just words"))
