"""`export --format onnx [--quantize int8]`: the merged model with its pooling and softmax as an ONNX graph, which
predict and serve run with onnxruntime (the `onnx` kind) exactly as the PyTorch run scores (a probe run's export:
tests/test_round_trip.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from lorabench.api import resolve_config, train
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.data.tokenization import encode, load_tokenizer
from lorabench.models.onnx import BackendTokenizer, OnnxClassifier
from lorabench.models.registry import load_classifier
from lorabench.workflows.export import EXPORT_INFO, export_run
from lorabench.workflows.serve import create_app


@pytest.fixture(scope="module")
def bert_run(tiny_bert, small_data, tmp_path_factory):
    """A tiny BERT run pooling the mean (its folder asks for it), with a text template."""
    out = tmp_path_factory.mktemp("onnx_bert") / "run"
    config = resolve_config(
        str(tiny_bert),
        overrides={
            "data": {"source": str(small_data), "text_template": "{keyword}: {text}"},
            "train": {"epochs": 1, "lr": 1e-2, "max_length": 48, "eval_batch_size": 16},
        },
    )
    train(config, out)
    return out


@pytest.fixture(scope="module")
def onnx_export(bert_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_export") / "fp32"
    export_run(bert_run, out, export_format="onnx")
    return out


def _validation_texts(run) -> list[str]:
    return load_splits(RunDir(run).config().data).validation["text"].tolist()


def test_onnx_probabilities_equal_the_pytorch_runs(bert_run, onnx_export):
    texts = _validation_texts(bert_run)
    classifier = load_classifier(onnx_export)
    assert isinstance(classifier, OnnxClassifier) and classifier.settings.pooling == "mean"
    probabilities = classifier.predict_proba(texts)
    recorded = pd.read_csv(bert_run / "val_predictions.csv")[["prob_0", "prob_1"]].to_numpy()
    np.testing.assert_allclose(probabilities, recorded, atol=1e-4)
    np.testing.assert_allclose(probabilities, load_classifier(bert_run).predict_proba(texts), atol=1e-4)
    assert np.ptp(probabilities[:, 1]) > 1e-3  # the scores vary from text to text
    assert classifier.predict_proba([]).shape == (0, 2)
    assert classifier.predict_proba([""]).shape == (1, 2)  # an empty text scores as the lora kind scores it


def test_the_exported_tokenizer_gives_the_runs_token_ids(bert_run, onnx_export):
    texts = _validation_texts(bert_run) + ["", "x" * 400]  # long ones are cut to max_length keeping </s>
    labels = np.full(len(texts), -1)
    original = encode(load_tokenizer(str(bert_run / "adapter")), texts, labels, 48, "t")
    exported = encode(BackendTokenizer(onnx_export / "onnx" / "tokenizer.json"), texts, labels, 48, "t")
    assert exported.input_ids == original.input_ids and exported.truncated == original.truncated > 0


def test_the_export_carries_the_metadata_and_a_model_card(bert_run, onnx_export):
    summary = RunDir(bert_run).summary()
    assert {"onnx/model.onnx", "onnx/tokenizer.json", "onnx/settings.json", "config.yaml", "summary.json"} <= {
        str(path.relative_to(onnx_export)) for path in onnx_export.rglob("*") if path.is_file()
    }
    assert not (onnx_export / "adapter").exists()
    info = json.loads((onnx_export / EXPORT_INFO).read_text())
    assert info["format"] == "onnx" and info["label_names"] == summary.label_names
    assert info["threshold"] == summary.threshold and info["max_length"] == 48
    assert info["text_template"] == "{keyword}: {text}" and info["pooling"] == "mean" and info["quantize"] == "none"
    assert RunDir(onnx_export).summary().kind == "onnx"
    card = (onnx_export / "README.md").read_text()
    front = yaml.safe_load(card.removeprefix("---\n").split("\n---\n", 1)[0])
    assert front["library_name"] == "onnx" and "onnx" in front["tags"]
    assert "- pooling: mean of the last hidden states" in card and "onnx/model.onnx" in card


def test_predict_cli_on_the_export_gives_the_runs_labels(bert_run, onnx_export, small_data, tmp_path, cli):
    for name, run in (("run", bert_run), ("onnx", onnx_export)):
        result = cli(
            "--quiet", "predict", "--run", run, "--data", small_data / "test.csv", "--out", tmp_path / f"{name}.csv"
        )
        assert result.code == 0, result.stderr
    torch_rows, onnx_rows = pd.read_csv(tmp_path / "run.csv"), pd.read_csv(tmp_path / "onnx.csv")
    assert onnx_rows["id"].tolist() == torch_rows["id"].tolist()
    assert onnx_rows["target"].tolist() == torch_rows["target"].tolist()
    np.testing.assert_allclose(onnx_rows["score"], torch_rows["score"], atol=1e-4)


def test_serve_answers_from_the_export(onnx_export, bert_run):
    from fastapi.testclient import TestClient

    rows = [{"keyword": "fire", "text": "the forest is burning"}, {"keyword": "", "text": "lovely day"}]
    expected = load_classifier(bert_run).predict_proba([f"{row['keyword']}: {row['text']}" for row in rows])
    app = create_app(load_classifier(onnx_export), RunDir(onnx_export).summary(), text_template="{keyword}: {text}")
    with TestClient(app) as client:
        answer = client.post("/predict", json={"rows": rows})
    assert answer.status_code == 200, answer.text
    scores = [prediction["score"] for prediction in answer.json()["predictions"]]
    np.testing.assert_allclose(scores, expected[:, 1], atol=1e-4)


def test_int8_export_is_quantized_and_predicts_close_to_fp32(bert_run, onnx_export, tmp_path, cli):
    import onnx

    result = cli(
        "--quiet", "export", "--run", bert_run, "--out", tmp_path / "int8", "--format", "onnx", "--quantize", "int8"
    )
    assert result.code == 0 and result.stderr == "", result.stderr  # onnxruntime's advice to pre-process is not shown
    operators = {node.op_type for node in onnx.load(tmp_path / "int8" / "onnx" / "model.onnx").graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= operators
    assert "MatMulInteger" not in {node.op_type for node in onnx.load(onnx_export / "onnx" / "model.onnx").graph.node}
    assert json.loads((tmp_path / "int8" / EXPORT_INFO).read_text())["quantize"] == "int8"
    texts = _validation_texts(bert_run)
    int8 = load_classifier(tmp_path / "int8").predict_proba(texts)
    fp32 = load_classifier(onnx_export).predict_proba(texts)
    assert 0 < np.abs(int8 - fp32).max() < 0.05


def test_onnx_is_refused_in_one_line_for_a_tfidf_run_and_quantize_needs_onnx(small_data, bert_run, tmp_path, cli):
    train(resolve_config("tfidf", overrides={"data": {"source": str(small_data)}}), tmp_path / "tfidf")
    result = cli("export", "--run", tmp_path / "tfidf", "--out", tmp_path / "out", "--format", "onnx")
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: export --format onnx applies to LoRA and probe runs")
    result = cli("export", "--run", bert_run, "--out", tmp_path / "out", "--quantize", "int8")
    assert result.code == 2 and "--quantize int8 applies to --format onnx, not --format run" in result.stderr
    result = cli("export", "--run", bert_run, "--out", tmp_path / "out", "--merge", "--format", "onnx")
    assert result.code == 2 and "give one of --merge and --format onnx" in result.stderr
    assert not (tmp_path / "out").exists()
