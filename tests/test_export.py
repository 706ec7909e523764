"""`lorabench export`: the run's files as they are, or merged into a plain Transformers checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lorabench.api import resolve_config, train
from lorabench.cli import app
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import RunDir
from lorabench.models.registry import load_classifier
from lorabench.workflows.export import EXPORT_INFO, export_run
from lorabench.workflows.predict import predict_file


@pytest.fixture(scope="module", params=["roberta", "mpnet", "llama"])
def run_dir(request, tiny_models, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"export_{request.param}") / "run"
    config = resolve_config(
        str(tiny_models[request.param]),
        overrides={
            "data": {"source": str(small_data)},
            "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "max_length": 48, "eval_batch_size": 64},
        },
    )
    train(config, out)
    return out


def test_merged_export_loads_with_plain_transformers_and_reproduces_predict(run_dir, small_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = CliRunner().invoke(
        app, ["--quiet", "export", "--run", str(run_dir), "--out", str(tmp_path / "merged"), "--merge"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "merged"
    files = set(json.loads(result.stdout)["files"])
    assert {"model.safetensors", "config.json", "tokenizer.json", EXPORT_INFO} <= files
    assert not any(name.endswith(".bin") or name.startswith("adapter") for name in files)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["label2id"] == {"0": 0, "1": 1}
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["threshold"] == json.loads((run_dir / "summary.json").read_text())["threshold"]

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora_" in name for name, _ in model.named_parameters())
    texts = pd.read_csv(small_data / "test.csv")["text"].tolist()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=info["max_length"], return_tensors="pt")
        positive = torch.softmax(model(**batch).logits, dim=-1)[:, 1].numpy()

    predict_file(run_dir, small_data / "test.csv", tmp_path / "predicted.csv")
    predicted = pd.read_csv(tmp_path / "predicted.csv")
    assert (positive >= info["threshold"]).astype(int).tolist() == predicted["target"].tolist()
    np.testing.assert_allclose(positive, predicted["score"], atol=2e-6)


def test_plain_export_is_a_run_that_predicts_identically(run_dir, small_data, tmp_path):
    result = export_run(run_dir, tmp_path / "plain")
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "config.yaml",
        "summary.json",
        EXPORT_INFO,
    } <= set(result["files"])
    assert not any(name.startswith("checkpoint") or name.endswith("_predictions.csv") for name in result["files"])
    texts = pd.read_csv(small_data / "test.csv")["text"].tolist()[:16]
    np.testing.assert_array_equal(
        load_classifier(tmp_path / "plain").predict_proba(texts), load_classifier(run_dir).predict_proba(texts)
    )


def test_export_replaces_only_an_earlier_export(run_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LorabenchError, match="holds no lorabench export"):
        export_run(run_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(LorabenchError, match="outside the run directory"):
        export_run(run_dir, run_dir / "export")
    with pytest.raises(LorabenchError, match="not a lorabench run"):
        export_run(tmp_path / "mine", tmp_path / "out")

    export_run(run_dir, tmp_path / "again", merge=True)
    export_run(run_dir, tmp_path / "again")  # an earlier export is replaced whole
    assert not (tmp_path / "again" / "model.safetensors").exists()
    assert json.loads((tmp_path / "again" / EXPORT_INFO).read_text())["format"] == "run"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directories left


def test_tfidf_runs_predict_and_export_as_files_but_do_not_merge(small_data, tmp_path):
    train(resolve_config("tfidf", overrides={"data": {"source": str(small_data)}}), tmp_path / "run")
    with pytest.raises(LorabenchError, match="export --merge applies to LoRA runs"):
        export_run(tmp_path / "run", tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged").exists()
    export_run(tmp_path / "run", tmp_path / "exported")
    predict_file(tmp_path / "run", small_data / "test.csv", tmp_path / "a.csv")
    predict_file(tmp_path / "exported", small_data / "test.csv", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    recorded = pd.read_csv(tmp_path / "run" / "test_predictions.csv")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "a.csv")["score"], recorded["prob_1"], atol=2e-6)


@pytest.fixture(scope="module")
def tfidf_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_tfidf") / "run"
    train(resolve_config("tfidf", overrides={"data": {"source": str(small_data)}}), out)
    return out


def _card(directory) -> tuple[dict, str]:
    """The model card's front matter (parsed) and body."""
    text = (directory / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text.removeprefix("---\n").split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.mark.parametrize(
    ("which", "merge", "library"),
    [("tfidf", False, "scikit-learn"), ("llama", False, "peft"), ("llama", True, "transformers")],
)
def test_every_export_carries_a_model_card_built_from_the_record(
    which, merge, library, tfidf_run, llama_run, small_data, tmp_path
):
    run = tfidf_run if which == "tfidf" else llama_run
    export_run(run, tmp_path / "out", merge=merge)
    meta, body = _card(tmp_path / "out")
    summary, config = RunDir(run).summary(), RunDir(run).config()

    assert meta["library_name"] == library and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == config.model.source and "lorabench" in meta["tags"]
    assert ("lora" in meta["tags"]) == (which == "llama")
    (result,) = meta["model-index"][0]["results"]  # the small data's test split has no labels
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"] == {"name": str(small_data), "type": str(small_data), "split": "validation"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == summary.val.model_dump()
    assert {m["split"] for m in result["metrics"]} == {"validation"}

    assert f"**{summary.threshold}**" in body and "maximises F1 on the validation split" in body
    assert f"| validation | {summary.val.f1:.4f} |" in body
    assert f"train {summary.rows['train']}, validation {summary.rows['validation']}" in body
    assert ("PeftModel" in body) == (which == "llama" and not merge)
    assert ("AutoModelForSequenceClassification" in body) == (which == "llama")
    assert ("lorabench predict --run ." in body) == (not merge)
    assert ("LoRA: r 8" in body) == (which == "llama")
