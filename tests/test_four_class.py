"""Four string classes through the commands beyond a single run: `train --folds`, `data --label-issues`, the model
card of an export and `compare --ensemble`, on the synthetic four_class set (its own column names). None of them
may tune or show a decision threshold: with more than two classes the decision is the arg-max."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lorabench.api import compare, resolve_config, train
from lorabench.core.metrics import classification_metrics
from lorabench.workflows.export import export_run
from lorabench.workflows.model_card import CARD_FILE

FOUR_CLASS = {"label_column": "topic", "text_template": "{headline}. {body}", "id_column": "doc_id"}
TOPICS = ["business", "politics", "sport", "tech"]
ROWS = len(pd.read_csv(Path(__file__).parent / "data" / "four_class" / "train.csv"))  # labelled rows
PROBS = [f"prob_{topic}" for topic in TOPICS]

pytestmark = pytest.mark.slow  # tfidf's cross-validated C takes tens of seconds per fit on 2 shared cores


def cue_topics(texts: pd.Series, generator: Path) -> np.ndarray:
    """The topic whose cue words a text holds most of: the label the generator gave it before flipping."""
    spec = importlib.util.spec_from_file_location("make_synthetic", generator)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cues = module.CUES["four_class"]
    words = [re.findall(r"[a-z]+", text.lower()) for text in texts]
    return np.array([max(cues, key=lambda topic: sum(word in cues[topic] for word in w)) for w in words])


@pytest.fixture(scope="module")
def folds_run(four_class_data, tmp_path_factory):
    config = resolve_config("tfidf", overrides={"data": {"source": str(four_class_data), "folds": 2, **FOUR_CLASS}})
    out = tmp_path_factory.mktemp("four_class_folds") / "run"
    return out, train(config, out)


def test_folds_record_out_of_fold_macro_scores_and_no_threshold(folds_run):
    out, summary = folds_run
    assert summary.label_names == TOPICS and summary.threshold is None
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert len(oof) == ROWS and sorted(oof["prediction"].unique()) == TOPICS
    decisions = oof[PROBS].to_numpy().argmax(axis=1)
    assert oof["prediction"].tolist() == [TOPICS[i] for i in decisions]
    assert summary.val.f1 == classification_metrics(oof["label"].to_numpy(), decisions, 4).f1  # macro over 4


def test_label_issues_flag_the_flipped_topics(folds_run, four_class_data, cli):
    out, _ = folds_run
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in FOUR_CLASS.items()]
    done = cli("data", "-d", four_class_data, *flags, "--label-issues", out)
    assert done.code == 0, done.stderr
    issues = pd.read_csv(out / "label_issues.csv")
    assert set(issues["given_label"]) <= set(TOPICS) and set(issues["predicted_label"]) <= set(TOPICS)
    train_rows = pd.read_csv(four_class_data / "train.csv").set_index("doc_id")
    flipped = train_rows["topic"].to_numpy() != cue_topics(
        train_rows["headline"] + ". " + train_rows["body"], four_class_data.parent / "make_synthetic.py"
    )
    flipped_ids = set(train_rows.index[flipped])
    assert 0.05 * ROWS <= len(flipped_ids) <= 0.15 * ROWS  # about a tenth
    caught = issues["id"].isin(flipped_ids)
    assert caught.mean() >= 0.8 and caught.head(10).all()  # the likeliest errors are the flipped rows
    assert f"{len(issues)} of {ROWS} out-of-fold rows flagged" in " ".join(done.stdout.split())


def test_the_model_card_names_the_classes_and_the_arg_max_decision(folds_run, tmp_path):
    out, summary = folds_run
    export_run(out, tmp_path / "export")
    card = (tmp_path / "export" / CARD_FILE).read_text()
    assert "classes `business`, `politics`, `sport`, `tech`" in card
    assert "macro-averaged over the classes" in card and "(arg-max); no threshold is tuned" in card
    assert "Decision threshold" not in card and ">=" not in card
    front = yaml.safe_load(card.split("---")[1])
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert {m["name"] for m in metrics} >= {"macro F1 (validation)", "Accuracy (validation)"}
    assert next(m["value"] for m in metrics if m["type"] == "f1") == summary.val.f1


def test_compare_ensemble_averages_four_class_members(four_class_data, tmp_path, in_process):
    config = tmp_path / "compare.yaml"
    models = {"tfidf": {}, "tfidf-small": {"model": {"kind": "tfidf"}, "data": {"max_train_rows": 60}}}
    config.write_text(yaml.safe_dump({"data": FOUR_CLASS, "models": models}))
    out = tmp_path / "cmp"
    table = compare(None, out, data=str(four_class_data), config_file=config, ensemble=True)
    assert table["status"].tolist() == ["ok", "ok", "ok"] and table["classes"].tolist() == [4, 4, 4]
    run = out / "runs" / "ensemble"
    assert '"threshold": null' in (run / "summary.json").read_text()
    weights = yaml.safe_load((run / "members" / "ensemble.json").read_text())["weights"]
    own = pd.read_csv(run / "val_predictions.csv")
    averaged = sum(w * pd.read_csv(out / "runs" / name / "val_predictions.csv")[PROBS].to_numpy()
                   for name, w in weights.items())  # fmt: skip
    np.testing.assert_allclose(own[PROBS].to_numpy(), averaged, atol=2e-6)
    assert own["prediction"].tolist() == [TOPICS[i] for i in averaged.argmax(axis=1)]
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["model"].tolist() == [m for m in ["tfidf", "tfidf-small", "ensemble"] for _ in TOPICS]
