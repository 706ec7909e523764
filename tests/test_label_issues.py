"""`lorabench data --label-issues RUN`: planted label errors in crafted out-of-fold and validation predictions are
the rows flagged, in order of how confidently the model contradicts them; the data's conflicting texts are
counted; bad input is one line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lorabench.api import find_label_issues, resolve_config
from lorabench.core.config import DataConfig, config_to_yaml
from lorabench.core.storage import CONFIG_FILE
from lorabench.data.sources import load_splits
from lorabench.workflows.label_issues import ISSUES_FILE

ROWS = 80
CONFLICT = (40, 41)  # two rows of one text, labelled 0 and 1
# row -> the probability the model gives its (wrong) label; the lower, the likelier the error, the earlier its rank
PLANTED = {7: 0.02, 22: 0.04, 40: 0.06, 63: 0.08}


@pytest.fixture
def labelled(tmp_path) -> Path:
    """A train.csv of 80 rows, alternately labelled 0 and 1, with one text labelled both ways."""
    texts = [f"tweet number {i} about {'a fire' if i % 2 else 'the sun'}" for i in range(ROWS)]
    for row in CONFLICT:
        texts[row] = "the same words twice"
    directory = tmp_path / "data"
    directory.mkdir()
    frame = pd.DataFrame({"id": [100 + i for i in range(ROWS)], "text": texts, "target": [i % 2 for i in range(ROWS)]})
    frame.to_csv(directory / "train.csv", index=False)
    return directory


def predictions(ids, labels, planted: dict[int, float], seed: int = 0) -> pd.DataFrame:
    """A predictions file: clean rows get 0.75-0.98 on their label, planted rows their given small probability."""
    given_prob = np.random.default_rng(seed).uniform(0.75, 0.98, len(labels))
    for row, prob in planted.items():
        given_prob[row] = prob
    labels = np.asarray(labels)
    positive = np.where(labels == 1, given_prob, 1 - given_prob).round(6)
    return pd.DataFrame(
        {"id": ids, "label": labels, "prediction": (positive > 0.5).astype(int), "prob_0": 1 - positive,
         "prob_1": positive}
    )  # fmt: skip


@pytest.fixture
def oof_run(tmp_path, labelled) -> Path:
    train = pd.read_csv(labelled / "train.csv")
    frame = predictions(train["id"], train["target"], PLANTED)
    frame.insert(1, "text", train["text"])
    run = tmp_path / "run"
    run.mkdir()
    frame.to_csv(run / "oof_predictions.csv", index=False)
    return run


def test_planted_errors_are_flagged_first_and_in_order_of_confidence(oof_run, labelled):
    issues = find_label_issues(oof_run, DataConfig(source=str(labelled)))
    table = pd.read_csv(oof_run / ISSUES_FILE)
    assert table["id"].tolist() == [100 + row for row in PLANTED]  # exactly the planted rows, likeliest first
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["given_label_prob"].tolist() == pytest.approx(list(PLANTED.values()))
    assert table["given_label"].tolist() == [row % 2 for row in PLANTED]
    assert table["predicted_label"].tolist() == [1 - row % 2 for row in PLANTED]
    assert table["text"].tolist()[2] == "the same words twice"
    assert (issues.checked_rows, issues.flagged_rows, issues.only_validation) == (ROWS, 4, False)
    assert (issues.conflicting_texts, issues.conflicting_texts_checked, issues.conflicting_texts_flagged) == (1, 1, 1)
    assert [row["id"] for row in issues.top] == [str(i) for i in table["id"]]  # ids as written


def test_cli_prints_the_count_the_top_rows_and_the_conflicting_texts(cli, oof_run, labelled, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # the table's texts on one line each
    out = tmp_path / "issues.csv"
    result = cli("data", "--data", labelled, "--label-issues", oof_run, "--out", out)
    assert result.code == 0, result.stderr
    assert f"label issues: 4 of {ROWS} out-of-fold rows flagged" in result.stdout
    assert "conflicting texts flagged: 1/1" in result.stdout
    assert "tweet number 7 about a fire" in result.stdout
    assert pd.read_csv(out)["id"].tolist() == [107, 122, 140, 163] and not (oof_run / ISSUES_FILE).exists()

    result = cli("data", "--data", labelled, "--label-issues", oof_run, "--json")
    issues = json.loads(result.stdout)["label_issues"]
    assert issues["flagged_rows"] == 4 and issues["top"][0]["id"] == "107" and issues["conflicting_texts_flagged"] == 1


def test_without_out_of_fold_predictions_the_validation_rows_are_checked(cli, tmp_path, labelled):
    config = resolve_config("tfidf", None, {"data": {"source": str(labelled)}})
    validation = load_splits(config.data).validation
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG_FILE).write_text(config_to_yaml(config))
    predictions(validation["id"], validation["label"], {3: 0.03, 11: 0.05}).to_csv(
        run / "val_predictions.csv", index=False
    )
    result = cli("data", "--data", labelled, "--label-issues", run)
    assert result.code == 0, result.stderr
    assert f"label issues: 2 of {len(validation)} validation rows flagged" in result.stdout
    assert "only validation rows were checked" in result.stdout
    table = pd.read_csv(run / ISSUES_FILE)
    assert table["id"].astype(str).tolist() == [validation["id"].iloc[3], validation["id"].iloc[11]]
    assert table["text"].tolist() == [validation["text"].iloc[3], validation["text"].iloc[11]]  # joined texts


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no run", "no run directory at"),
        ("no predictions", "holds neither oof_predictions.csv"),
        ("no probabilities", "has no prob_<class> column per class"),
        ("not probabilities", "must be a probability in [0, 1]"),
        ("unknown label", "labels 7 are neither class ids nor class names"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, oof_run, labelled, tmp_path, damage, message):
    oof = oof_run / "oof_predictions.csv"
    frame = pd.read_csv(oof)
    if damage == "no run":
        oof_run = tmp_path / "missing"
    elif damage == "no predictions":
        oof.unlink()
    elif damage == "no probabilities":
        frame.drop(columns=["prob_0", "prob_1"]).to_csv(oof, index=False)
    elif damage == "not probabilities":
        frame.assign(prob_1=frame["prob_1"] * 2).to_csv(oof, index=False)
    else:
        frame.assign(label=frame["label"].where(frame.index != 5, 7)).to_csv(oof, index=False)
    out = tmp_path / "issues.csv"
    result = cli("data", "--data", labelled, "--label-issues", oof_run, "--out", out)
    assert result.code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stdout == "" and not out.exists() and not (oof_run / ISSUES_FILE).exists()


def test_out_without_label_issues_is_refused(cli, labelled, tmp_path):
    result = cli("data", "--data", labelled, "--out", tmp_path / "issues.csv")
    assert result.code == 2 and "give --label-issues RUN too" in result.stderr


def test_a_conflicting_text_the_model_only_mildly_contradicts_is_flagged(tmp_path, labelled):
    """Row 40 (label 0) shares its text with row 41 (label 1); the model gives row 40's label 0.4: too mild for
    cleanlab's per-class thresholds, but one of the two labels is wrong for certain and the model says which."""
    train = pd.read_csv(labelled / "train.csv")
    frame = predictions(train["id"], train["target"], {7: 0.02, 40: 0.4})
    frame.insert(1, "text", train["text"])
    run = tmp_path / "mild"
    run.mkdir()
    frame.to_csv(run / "oof_predictions.csv", index=False)
    issues = find_label_issues(run, DataConfig(source=str(labelled)))
    table = pd.read_csv(run / ISSUES_FILE)
    assert table["id"].tolist() == [107, 140]  # ranked by the probability of the given label, as the rest
    assert table["conflicting_text"].tolist() == [False, True]
    assert issues.conflicting_texts_flagged == 1
    frame.loc[40, "text"] = "a text of its own"  # no longer a conflict: cleanlab's verdict alone
    frame.to_csv(run / "oof_predictions.csv", index=False)
    find_label_issues(run, DataConfig(source=str(labelled)))
    assert pd.read_csv(run / ISSUES_FILE)["id"].tolist() == [107]
