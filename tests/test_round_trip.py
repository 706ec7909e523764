"""Every kind in the registry, trained on a binary and a 4-class synthetic set, answers the same after reloading:
the run's own test predictions, `load_classifier`, `predict` through the CLI and `serve` agree to 1e-6.

A new kind in lorabench.models.registry.CLASSIFIERS fails `test_every_kind_has_a_builder` until it is built here,
so no kind escapes the check (the onnx kind is built from a LoRA run, and from a probe run as well). The run's test
predictions are the reference because training scores its splits with the saved copy
(lorabench.training.records.saved_copy) or with weights read back from the saved adapter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from lorabench.core import storage
from lorabench.core.metrics import decide
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.models import tfidf
from lorabench.models.registry import CLASSIFIERS, classifier_type, load_classifier
from lorabench.workflows.serve import ServeSettings, create_app

TOLERANCE = 1e-6
# ONNX Runtime's kernels round differently from PyTorch's: the export is held to the run it came from this close.
ONNX_TOLERANCE = 1e-5
# The user's own columns in the 4-class set; the binary set has Kaggle's id,text,target.
DATA_FLAGS = {
    "binary": [],
    "four_class": ["--label-column", "topic", "--text-template", "{headline}. {body}", "--id-column", "doc_id"],
}
ID_COLUMN = {"binary": "id", "four_class": "doc_id"}


def _train(cli, out: Path, data: Path, dataset: str, *flags) -> Path:
    result = cli("train", "--data", data, "--out", out, *DATA_FLAGS[dataset], *flags)
    assert result.code == 0, result.stderr
    return out


def _tfidf(cli, out, data, dataset, _models):
    return _train(cli, out, data, dataset, "--model", "tfidf")


def _lora(cli, out, data, dataset, models, *method):
    flags = ["--epochs", "1", "--max-length", "64", "--lr", "1e-2", "--eval-batch-size", "32", *method]
    return _train(cli, out, data, dataset, "--model", models["encoder"], *flags)


def _full(cli, out, data, dataset, models):
    return _lora(cli, out, data, dataset, models, "--method", "full", "--full-lr", "1e-3")


def _probe(cli, out, data, dataset, models):
    return _train(cli, out, data, dataset, "--model", models["encoder"], "--method", "probe", "--max-length", "64")


def _setfit(cli, out, data, dataset, models):
    # one pair per text and epoch: the point is the saved, tuned encoder, not its quality
    return _train(cli, out, data, dataset, "--model", models["encoder"], "--method", "setfit", "--max-length", "64",
                  "--epochs", "1", "--full-lr", "1e-3", "--set", "train.setfit_pairs=1")  # fmt: skip


def _prompt(cli, out, data, dataset, models):
    # a window that holds the shots: the 4-class set's four take 415 tokens
    return _train(cli, out, data, dataset, "--model", models["decoder"], "--method", "prompt", "--shots", "1",
                  "--max-length", "600")  # fmt: skip


def _ensemble(cli, out, data, dataset, _models):
    return _train(cli, out, data, dataset, "--model", "tfidf", "--folds", "2")


def _onnx(cli, out, data, dataset, models):
    source = _lora(cli, out.with_name(f"{out.name}-source"), data, dataset, models)
    result = cli("export", "--run", source, "--out", out, "--format", "onnx")
    assert result.code == 0, result.stderr
    return out


BUILDERS = {"tfidf": _tfidf, "lora": _lora, "full": _full, "probe": _probe, "setfit": _setfit, "prompt": _prompt,
            "ensemble": _ensemble, "onnx": _onnx}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_causal_lm, tmp_path_factory):
    """Builds each (kind, data set) run once, on first use."""
    built: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("round_trip")

    def get(kind: str, dataset: str, cli) -> Path:
        if (kind, dataset) not in built:
            data = Path(__file__).parent / "data" / dataset
            models = {"encoder": tiny_bert, "decoder": tiny_causal_lm}
            built[kind, dataset] = BUILDERS[kind](cli, root / f"{kind}-{dataset}", data, dataset, models)
        return built[kind, dataset]

    return get


def _reference(run: Path) -> tuple[np.ndarray, list]:
    """The probabilities training wrote for the test rows (for an ONNX export: those of the run it came from)."""
    source = run.with_name(f"{run.name}-source")
    table = pd.read_csv((source if source.is_dir() else run) / "test_predictions.csv")
    names = RunDir(run).summary().label_names
    return table[[f"prob_{name}" for name in names]].to_numpy(), names


def _tolerance(kind: str) -> float:
    return ONNX_TOLERANCE if kind == "onnx" else TOLERANCE


def test_every_kind_has_a_builder():
    assert set(BUILDERS) == set(CLASSIFIERS)
    assert {kind: classifier_type(kind).kind for kind in CLASSIFIERS} == {kind: kind for kind in CLASSIFIERS}


@pytest.mark.parametrize("dataset", sorted(DATA_FLAGS))
@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_a_saved_run_answers_as_it_did_when_trained(kind, dataset, runs, cli, tmp_path):
    assert_round_trip(runs(kind, dataset, cli), kind, dataset, cli, tmp_path)


@pytest.mark.parametrize(("kind", "dataset"), [("probe", "binary"), ("probe", "four_class"), ("setfit", "four_class")])
def test_a_probe_runs_onnx_export_answers_as_the_probe_did(kind, dataset, runs, cli, tmp_path):
    """The `onnx` builder exports a LoRA run; a probe run exports its encoder (a setfit run's tuned one), pooling
    and head."""
    probe = runs(kind, dataset, cli)
    (tmp_path / "onnx-source").symlink_to(probe)  # _reference: the probabilities of the run it came from
    result = cli("export", "--run", probe, "--out", tmp_path / "onnx", "--format", "onnx")
    assert result.code == 0, result.stderr
    assert RunDir(tmp_path / "onnx").summary().kind == "onnx"
    assert_round_trip(tmp_path / "onnx", "onnx", dataset, cli, tmp_path)


def assert_round_trip(run: Path, kind: str, dataset: str, cli, tmp_path: Path) -> None:
    """The run's recorded test probabilities equal load_classifier's, predict's and serve's (both forms)."""
    expected, names = _reference(run)
    assert len(names) == (2 if dataset == "binary" else 4)
    texts = load_splits(RunDir(run).config().data).test["text"].tolist()
    classifier = load_classifier(run)
    np.testing.assert_allclose(classifier.predict_proba(texts), expected, atol=_tolerance(kind), rtol=0)
    labels, scores = decide(expected, names, classifier.threshold)
    assert np.ptp(expected, axis=0).max() > 1e-4  # the scores vary from text to text

    data = Path(__file__).parent / "data" / dataset / "test.csv"
    result = cli("predict", "--run", run, "--data", data, "--out", tmp_path / "p.csv", "--probabilities")
    assert result.code == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "p.csv")  # the run's own id and label columns, without flags
    label_column = RunDir(run).config().data.label_column
    assert list(predicted.columns[:3]) == [ID_COLUMN[dataset], label_column, "score"]
    assert predicted[label_column].astype(str).tolist() == [str(label) for label in labels]
    np.testing.assert_allclose(predicted["score"], scores, atol=_tolerance(kind) + 1e-6, rtol=0)  # 6 decimals
    probability_columns = [f"prob_{name}" for name in names]
    np.testing.assert_allclose(predicted[probability_columns], expected, atol=_tolerance(kind) + 1e-6, rtol=0)

    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    rows = frame.drop(columns=[ID_COLUMN[dataset]]).to_dict(orient="records")
    template = RunDir(run).config().data.text_template
    app = create_app(classifier, RunDir(run).summary(), ServeSettings(max_chars=10_000), text_template=template)
    with TestClient(app) as client:
        answer = client.post("/predict", json={"rows": rows} if template else {"texts": texts, "probabilities": True})
        inference = client.post("/", json={"inputs": texts})
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    assert [p["label"] for p in served] == labels
    np.testing.assert_allclose([p["score"] for p in served], scores, atol=_tolerance(kind) + 1e-6, rtol=0)
    if not template:
        served_probabilities = [[p["probabilities"][str(name)] for name in names] for p in served]
        np.testing.assert_allclose(served_probabilities, expected, atol=_tolerance(kind) + 1e-6, rtol=0)
    # the Hugging Face Inference API form: every class, most probable first
    assert inference.status_code == 200, inference.text
    by_name = [{item["label"]: item["score"] for item in answer} for answer in inference.json()]
    hf_probabilities = [[scores_of[str(name)] for name in names] for scores_of in by_name]
    np.testing.assert_allclose(hf_probabilities, expected, atol=_tolerance(kind) + 1e-6, rtol=0)


def test_an_array_saved_without_its_strides_stops_training(cli, tmp_path, monkeypatch):
    """The injected fault: a kind writing its arrays as raw buffers, past core.storage.save_arrays. A 4-class tfidf model's Fortran-ordered
    coefficients then reload as another matrix, and training refuses to record it (exit 1, one line)."""
    raw = lambda path, arrays: storage.write_atomic(path, safetensors.numpy.save(arrays))  # noqa: E731
    monkeypatch.setattr(tfidf, "save_arrays", raw)
    data = Path(__file__).parent / "data" / "four_class"
    result = cli("train", "--model", "tfidf", "--data", data, "--out", tmp_path / "run", *DATA_FLAGS["four_class"])
    assert result.code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("internal error (InternalError): the tfidf model saved in") and "--debug" in error
    assert "reloads with other probabilities" in error
    assert not (tmp_path / "run").exists()
