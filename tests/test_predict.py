"""`lorabench predict`: scoring files with a trained run, streamed in chunks, and Kaggle's submission format."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lorabench.cli import app
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import decide
from lorabench.workflows.predict import predict_file


class FakeClassifier:
    """P(positive) from the text's length, recording the size of every call (to see the streaming)."""

    label_names = [0, 1]
    threshold = 0.5

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def predict_proba(self, texts):
        self.calls.append(len(texts))
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("model failed")
        positive = np.array([min(len(t), 100) / 100 for t in texts], dtype=np.float32)
        return np.stack([1 - positive, positive], axis=1)


def test_predict_keeps_ids_and_reproduces_the_runs_test_scores(llama_run, llama_classifier, small_data, tmp_path):
    result = predict_file(llama_run, small_data / "test.csv", tmp_path / "out.csv", classifier=llama_classifier)
    written = pd.read_csv(tmp_path / "out.csv")
    source = pd.read_csv(small_data / "test.csv")
    recorded = pd.read_csv(llama_run / "test_predictions.csv")
    threshold = json.loads((llama_run / "summary.json").read_text())["threshold"]

    assert list(written.columns) == ["id", "target", "score"]
    assert written["id"].tolist() == source["id"].tolist() and len(written) == 40
    assert result["rows"] == 40 and result["threshold"] == threshold
    np.testing.assert_allclose(written["score"], recorded["prob_1"], atol=2e-6)
    # the recorded threshold decides, not the arg-max
    assert written["target"].tolist() == (recorded["prob_1"] >= threshold).astype(int).tolist()
    assert result["label_counts"] == {
        str(k): int(v) for k, v in written["target"].value_counts().reindex([0, 1], fill_value=0).items()
    }
    # --threshold 0.5 reproduces the run's own arg-max predictions
    predict_file(llama_run, small_data / "test.csv", tmp_path / "half.csv", threshold=0.5, classifier=llama_classifier)
    assert pd.read_csv(tmp_path / "half.csv")["target"].tolist() == recorded["prediction"].tolist()


def test_cli_submission_is_exactly_kaggles_format(llama_run, small_data, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "--quiet",
            "predict",
            "--run",
            str(llama_run),
            "--data",
            str(small_data / "test.csv"),
            "--out",
            str(tmp_path / "sub.csv"),
            "--submission",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "id,target"
    assert len(lines) == 41
    ids = pd.read_csv(small_data / "test.csv")["id"].astype(str).tolist()
    assert [line.split(",")[0] for line in lines[1:]] == ids
    assert {line.split(",")[1] for line in lines[1:]} <= {"0", "1"}
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows"] == 40


def test_chunked_prediction_equals_unchunked_for_every_input_format(llama_run, llama_classifier, small_data, tmp_path):
    source = pd.read_csv(small_data / "test.csv")
    source.to_parquet(tmp_path / "test.parquet")
    source.to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    whole = predict_file(llama_run, small_data / "test.csv", tmp_path / "whole.csv", classifier=llama_classifier)
    expected = pd.read_csv(tmp_path / "whole.csv")
    for name in ("test.parquet", "test.jsonl"):
        predict_file(llama_run, tmp_path / name, tmp_path / f"{name}.jsonl", chunk_rows=7, classifier=llama_classifier)
        chunked = pd.read_json(tmp_path / f"{name}.jsonl", lines=True)
        assert chunked["id"].astype(int).tolist() == expected["id"].tolist()
        assert chunked["target"].tolist() == expected["target"].tolist()
        np.testing.assert_allclose(chunked["score"], expected["score"], atol=2e-6)
    predict_file(
        llama_run, small_data / "test.csv", tmp_path / "chunked.csv", chunk_rows=7, classifier=llama_classifier
    )
    assert pd.read_csv(tmp_path / "chunked.csv")["target"].tolist() == expected["target"].tolist()
    assert (
        whole["label_counts"]
        == predict_file(
            llama_run, tmp_path / "test.parquet", tmp_path / "p.csv", chunk_rows=7, classifier=llama_classifier
        )["label_counts"]
    )


def test_large_file_is_read_in_bounded_chunks(tmp_path):
    texts = [("word " * (i % 30)).strip() for i in range(5000)]
    pd.DataFrame({"id": range(5000), "keyword": "x", "text": texts}).to_csv(tmp_path / "big.csv", index=False)
    fake = FakeClassifier()
    result = predict_file(None, tmp_path / "big.csv", tmp_path / "out.jsonl", chunk_rows=512, classifier=fake)
    assert max(fake.calls) == 512 and sum(fake.calls) == 5000
    written = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert len(written) == 5000 and written["id"].tolist() == list(range(5000))
    assert list(written.columns) == ["id", "target", "score"]  # other input columns are not carried along
    # score = P(positive); target = 1 exactly when it reaches the threshold
    assert written["score"].tolist() == pytest.approx([min(len(t), 100) / 100 for t in texts], abs=1e-6)
    assert (written["target"] == (written["score"] >= 0.5)).all()
    assert result["empty_texts"] == sum(1 for t in texts if not t)  # the empty-text rows are kept and scored


def test_failure_midway_leaves_no_output(tmp_path):
    pd.DataFrame({"id": range(100), "text": ["a tweet"] * 100}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out.csv").write_text("previous results\n")
    with pytest.raises(RuntimeError, match="model failed"):
        predict_file(
            None, tmp_path / "in.csv", tmp_path / "out.csv", chunk_rows=30, classifier=FakeClassifier(fail_on_call=3)
        )
    assert (tmp_path / "out.csv").read_text() == "previous results\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temporary file left


def test_bad_requests_are_refused_with_one_line(tmp_path):
    pd.DataFrame({"key": [1, 2], "text": ["a", "b"]}).to_csv(tmp_path / "in.csv", index=False)
    pd.DataFrame({"id": [1, 2], "body": ["a", "b"]}).to_csv(tmp_path / "notext.csv", index=False)
    fake = FakeClassifier()
    with pytest.raises(LorabenchError, match="needs an id column 'id'"):
        predict_file(None, tmp_path / "in.csv", tmp_path / "sub.csv", submission=True, classifier=fake)
    with pytest.raises(LorabenchError, match="no text column 'text'"):
        predict_file(None, tmp_path / "notext.csv", tmp_path / "o.csv", classifier=fake)
    with pytest.raises(LorabenchError, match=r"\.csv or \.jsonl"):
        predict_file(None, tmp_path / "in.csv", tmp_path / "o.parquet", classifier=fake)
    with pytest.raises(LorabenchError, match="between 0 and 1"):
        predict_file(None, tmp_path / "in.csv", tmp_path / "o.csv", threshold=1.5, classifier=fake)
    with pytest.raises(LorabenchError, match="must differ"):
        predict_file(None, tmp_path / "in.csv", tmp_path / "in.csv", classifier=fake)
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "sub.csv").exists()
    # without an id column the row number stands in, and --id-column picks another column
    predict_file(None, tmp_path / "in.csv", tmp_path / "rows.csv", classifier=fake)
    assert pd.read_csv(tmp_path / "rows.csv")["row"].tolist() == [0, 1]
    predict_file(None, tmp_path / "in.csv", tmp_path / "keyed.csv", submission=True, id_column="key", classifier=fake)
    assert (tmp_path / "keyed.csv").read_text().splitlines() == ["id,target", "1,0", "2,0"]


def test_cli_reports_errors_as_one_line(tmp_path, capsys, monkeypatch):
    from lorabench.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "lorabench",
            "predict",
            "--run",
            str(tmp_path / "missing"),
            "--data",
            str(tmp_path / "none.csv"),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: data file not found: {tmp_path / 'none.csv'}"
    assert not (tmp_path / "o.csv").exists()


def test_decide_uses_the_threshold_for_two_classes_and_argmax_for_more():
    two = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert decide(two, ["no", "yes"], 0.25) == (["yes", "yes"], pytest.approx(np.array([0.3, 0.6])))
    assert decide(two, ["no", "yes"], None)[0] == ["no", "yes"]
    three = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    labels, scores = decide(three, ["a", "b", "c"], None)
    assert labels == ["b", "a"] and scores.tolist() == [0.5, 0.6]


def test_an_empty_text_is_scored(llama_classifier):
    probabilities = llama_classifier.predict_proba(["", "forest fire near la ronge"])
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_text_template_is_applied_identically_in_train_predict_and_serve(small_data, tmp_path):
    from fastapi.testclient import TestClient

    from lorabench.api import resolve_config, train
    from lorabench.core.storage import RunDir
    from lorabench.models.registry import load_classifier
    from lorabench.workflows.serve import create_app

    template = "{keyword}: {text}"
    overrides = {"data": {"source": str(small_data), "text_template": template}}
    train(resolve_config("tfidf", overrides=overrides), tmp_path / "run")
    validation = pd.read_csv(tmp_path / "run" / "val_predictions.csv", dtype={"id": str})
    raw = pd.read_csv(small_data / "train.csv", dtype=str, keep_default_na=False, na_values=[""]).set_index("id")
    rows = raw.loc[validation["id"], ["keyword", "text"]].reset_index()
    assert rows["keyword"].isna().any()  # missing keywords are among them
    rows.to_csv(tmp_path / "validation_rows.csv", index=False)

    predict_file(tmp_path / "run", tmp_path / "validation_rows.csv", tmp_path / "out.csv", text_column="absent")
    predicted = pd.read_csv(tmp_path / "out.csv", dtype={"id": str})
    assert predicted["id"].tolist() == validation["id"].tolist()
    np.testing.assert_allclose(predicted["score"], validation["prob_1"], atol=1e-6)

    run = RunDir(tmp_path / "run")
    app = create_app(load_classifier(run.path), run.summary(), text_template=run.config().data.text_template)
    head = rows[["keyword", "text"]].head(5)
    body = head.astype(object).where(head.notna(), None).to_dict("records")  # a missing keyword is sent as null
    with TestClient(app) as client:
        answer = client.post("/predict", json={"rows": body}).json()
        refused = client.post("/predict", json={"rows": [{"text": "no keyword column"}]})
        assert client.post("/predict", json={"texts": ["a"], "rows": body}).status_code == 422  # one or the other
    assert [p["score"] for p in answer["predictions"]] == pytest.approx(validation["prob_1"].head(5).tolist(), abs=1e-6)
    assert refused.status_code == 422 and "does not have: keyword" in refused.json()["detail"]
