"""`model.pooling`: auto resolves per model, the run records the choice, and predict scores exactly as training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lorabench.api import resolve_config, train
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.models.packing import resolve_pooling
from lorabench.models.registry import load_classifier
from lorabench.models.weights import ResolvedModel, resolve_source, sentence_transformers_pooling
from lorabench.workflows.export import export_run
from lorabench.workflows.model_card import CARD_FILE


def _head_model(directory):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2)


def test_sentence_transformers_folders_name_their_pooling(tiny_bert, tiny_models):
    assert sentence_transformers_pooling(ResolvedModel(str(tiny_bert), None, True)) == "mean"
    assert sentence_transformers_pooling(ResolvedModel(str(tiny_models["roberta"]), None, True)) is None
    minilm = resolve_source(resolve_config("minilm").model)
    assert sentence_transformers_pooling(minilm) == "mean"  # all-MiniLM-L6-v2 was trained for mean pooling


def test_auto_resolves_per_model_and_a_choice_that_does_not_fit_is_refused(tiny_bert, tiny_models):
    bert, llama = _head_model(tiny_bert), _head_model(tiny_models["llama"])
    assert resolve_pooling("auto", bert, "mean") == "mean"
    assert resolve_pooling("auto", bert, None) == "cls"
    assert resolve_pooling("auto", llama, None) == "last"
    assert resolve_pooling("auto", llama, "mean") == "mean"
    assert [resolve_pooling(choice, bert) for choice in ("cls", "mean")] == ["cls", "mean"]
    with pytest.raises(LorabenchError, match="model.pooling cls does not fit llama: use last or mean"):
        resolve_pooling("cls", llama)
    with pytest.raises(LorabenchError, match="model.pooling last does not fit bert: use cls or mean"):
        resolve_pooling("last", bert)


def test_mean_is_refused_for_a_head_that_cannot_take_it():
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    distilbert = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    )
    with pytest.raises(LorabenchError, match="pooling mean supports decoders and bert, roberta.* not distilbert"):
        resolve_pooling("mean", distilbert)
    assert resolve_pooling("auto", distilbert, "mean") == "cls"  # auto never fails: the head's own token


def test_the_minilm_preset_keeps_the_cls_pooler_its_figures_were_measured_with():
    assert resolve_config("minilm").model.pooling == "cls"
    assert resolve_config("smollm2").model.pooling == "auto"


@pytest.fixture(scope="module", params=["auto", "cls"])
def bert_run(request, tiny_bert, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"pooling_{request.param}") / "run"
    config = resolve_config(
        str(tiny_bert),
        overrides={
            "model": {"pooling": request.param},
            "data": {"source": str(small_data)},
            "train": {"epochs": 1, "lr": 1e-2, "max_length": 48, "eval_batch_size": 16},
        },
    )
    train(config, out)
    return out


def test_predict_reproduces_the_runs_validation_scores_with_the_recorded_pooling(bert_run):
    run = RunDir(bert_run)
    requested, summary = run.config().model.pooling, run.summary()
    assert summary.pooling == {"auto": "mean", "cls": "cls"}[requested]  # the folder asks for mean pooling
    texts = load_splits(run.config().data).validation["text"].tolist()
    recorded = pd.read_csv(bert_run / "val_predictions.csv")[["prob_0", "prob_1"]].to_numpy()
    classifier = load_classifier(bert_run, batch_size=7)  # other batches than training's: padding must not matter
    assert classifier.pooling == summary.pooling
    probabilities = classifier.predict_proba(texts)
    np.testing.assert_allclose(probabilities, recorded, atol=1e-5)
    assert np.ptp(probabilities[:, 1]) > 1e-4  # the scores vary from text to text


def test_mean_pooling_differs_from_cls_on_the_same_weights(bert_run):
    if RunDir(bert_run).summary().pooling != "mean":
        pytest.skip("the mean-pooled run")
    classifier = load_classifier(bert_run)
    texts = ["a short text", "a longer text about a fire in the hills near the town"]
    mean = classifier.predict_proba(texts)
    classifier.pooling = "cls"
    assert np.abs(classifier.predict_proba(texts) - mean).max() > 1e-4


def test_a_mean_pooled_run_refuses_a_plain_merged_export_and_says_so_in_its_card(bert_run, tmp_path):
    summary = RunDir(bert_run).summary()
    export_run(bert_run, tmp_path / "plain")
    card = (tmp_path / "plain" / CARD_FILE).read_text()
    assert f"- pooling: {summary.pooling}" in card
    if summary.pooling == "mean":
        assert "mean of the last hidden states over the real (non-pad) tokens" in card
        with pytest.raises(LorabenchError, match="pools the mean of its tokens .* export with --format onnx"):
            export_run(bert_run, tmp_path / "merged", merge=True)
        assert not (tmp_path / "merged").exists()
        return
    export_run(bert_run, tmp_path / "merged", merge=True)  # cls: the plain checkpoint's own head pools the same
    assert "- pooling: cls, the first token" in (tmp_path / "merged" / CARD_FILE).read_text()
