"""Texts longer than the model's window: the share `data` reports, the note before training, and scoring a long
text as overlapping windows whose probabilities are averaged (data.long_texts windows)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lorabench.api import resolve_config, train
from lorabench.core.config import preset_names
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.data.tokenization import Encoded, encode_windows, load_tokenizer, truncation_note
from lorabench.models.registry import load_classifier

FOUR_CLASS = {"label_column": "topic", "text_template": "{headline}. {body}", "id_column": "doc_id"}
WINDOW = 16  # tokens; the four-class texts run to 60-90 of the tiny tokenizer's


@pytest.fixture(scope="module")
def windowed_run(tiny_bert, four_class_data, tmp_path_factory):
    """A tiny BERT trained on the four topics with a window far shorter than the texts, scoring in windows."""
    out = tmp_path_factory.mktemp("long_texts") / "run"
    config = resolve_config(
        str(tiny_bert),
        overrides={
            "data": {"source": str(four_class_data), "long_texts": "windows", "max_train_rows": 64, **FOUR_CLASS},
            "train": {"epochs": 1, "lr": 1e-2, "max_length": WINDOW, "eval_batch_size": 32},
        },
    )
    train(config, out)
    return out


@pytest.mark.slow
def test_a_windowed_score_is_the_mean_of_scoring_each_window_alone(windowed_run, four_class_data):
    classifier = load_classifier(windowed_run)
    frame = pd.read_csv(four_class_data / "test.csv").head(3)
    texts = (frame["headline"] + ". " + frame["body"]).tolist()
    windows, owners = encode_windows(classifier.tokenizer, texts, WINDOW)
    assert max(len(ids) for ids in windows.input_ids) == WINDOW
    counts = np.bincount(owners)
    assert len(counts) == 3 and counts.min() >= 4  # every text needs several windows
    expected = []
    for row in range(3):
        alone = [classifier.score(Encoded([ids], np.array([-1]), 0), "one")[0]
                 for ids, owner in zip(windows.input_ids, owners, strict=True) if owner == row]  # fmt: skip
        expected.append(np.mean(alone, axis=0))
    np.testing.assert_allclose(classifier.predict_proba(texts), np.array(expected), atol=1e-6)


def test_windows_overlap_by_half_and_cover_the_whole_text(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    text = " ".join(f"word{i}" for i in range(40))
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows, owners = encode_windows(tokenizer, [text], WINDOW)
    room = WINDOW - tokenizer.num_special_tokens_to_add()
    bodies = [ids[1:-1] for ids in windows.input_ids]  # <s> ... </s> in every window
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in windows.input_ids)
    assert bodies[0] == whole[:room] and bodies[1][: room // 2] == whole[room - room // 2 : room]
    rebuilt = bodies[0] + [token for body in bodies[1:] for token in body[room // 2 :]]
    assert rebuilt == whole and owners.tolist() == [0] * len(bodies)


@pytest.mark.slow
def test_the_run_scores_its_validation_in_windows(windowed_run):
    classifier = load_classifier(windowed_run)
    validation = pd.read_csv(windowed_run / "val_predictions.csv")
    probabilities = validation[[f"prob_{name}" for name in classifier.label_names]].to_numpy()
    texts = load_splits(RunDir(windowed_run).config().data).validation["text"].tolist()
    assert classifier.label_names == ["business", "politics", "sport", "tech"] and len(texts) == len(validation)
    np.testing.assert_allclose(probabilities, classifier.predict_proba(texts), atol=1e-5)


def test_a_window_with_no_room_for_text_is_refused(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    with pytest.raises(LorabenchError, match="no room for text"):
        encode_windows(tokenizer, ["a text"], 3)


def test_data_reports_the_share_of_texts_longer_than_each_models_window(cli, tmp_path):
    lengths = [10] * 12 + [200] * 4 + [600] * 4  # words; "word" is one minilm token, and [CLS] [SEP] add two
    rows = pd.DataFrame({"text": [" ".join(["word"] * n) for n in lengths], "target": [i % 2 for i in range(20)]})
    rows.to_csv(tmp_path / "long.csv", index=False)
    done = cli("data", "-d", tmp_path / "long.csv", "--json", "-m", "minilm", "-m", "tfidf")
    assert done.code == 0, done.stderr
    minilm, tfidf = json.loads(done.stdout)["windows"]
    assert minilm == {"model": "minilm", "window": 128, "texts": 20, "longer": 8, "share": 0.4, "longest": 602,
                      "error": ""}  # fmt: skip
    assert tfidf["window"] is None and tfidf["error"] == "no window: tfidf reads words, not tokens"
    assert json.loads(cli("data", "-d", tmp_path / "long.csv", "--json").stdout)["windows"] == []  # not asked


@pytest.mark.slow  # loads every local preset's tokenizer: smollm2's alone takes 5 s
def test_data_windows_counts_for_every_preset(cli, four_class_data):
    flags = ["--label-column", "topic", "--text-template", "{headline}. {body}"]
    presets = json.loads(cli("data", "-d", four_class_data, *flags, "--json", "--windows").stdout)["windows"]
    assert [row["model"] for row in presets] == preset_names()
    minilm = next(row for row in presets if row["model"] == "minilm")
    rows = sum(len(pd.read_csv(four_class_data / name)) for name in ("train.csv", "test.csv"))
    assert (minilm["window"], minilm["texts"], minilm["longer"]) == (128, rows, 0)  # news items under 90 tokens


def test_the_note_before_training_names_the_settings_only_when_most_texts_are_cut():
    assert truncation_note(0, 100, 90, 128) is None
    assert truncation_note(40, 100, 300, 128) == (
        "40 of 100 texts are longer than train.max_length 128 tokens (longest 300): they are truncated"
    )
    assert truncation_note(60, 100, 300, 128) == (
        "most texts will be cut: 60 of 100 texts are longer than train.max_length 128 tokens (longest 300); raise "
        "the window (train --set train.max_length=300, or train.max_length in compare's --config; `lorabench plan` "
        "prices the memory) or score them whole in overlapping windows (data.long_texts windows)"
    )
    assert "train --set train.max_length=512, the most this model reads, or" in truncation_note(60, 100, 900, 128, 512)
