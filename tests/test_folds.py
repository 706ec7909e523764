"""K folds and ensembles, both averaging runs: the folds' split, `train --folds K` (out-of-fold record, predict on
the average, resume, patience per fold), weights fitted on validation only, and `compare --ensemble`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from lorabench.api import compare, load_classifier, resolve_config, train
from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import best_threshold, classification_metrics
from lorabench.core.storage import RunDir
from lorabench.core.uncertainty import bootstrap_metrics
from lorabench.data.checks import normalise_texts
from lorabench.data.sources import load_splits
from lorabench.training.averaging import ensemble_of_runs, fit_weights, member_probabilities, weight_grid
from lorabench.workflows.serve import ServeSettings, create_app

DISASTER = ["fire", "flood", "storm", "quake", "smoke", "rescue", "burning", "evacuate"]
CALM = ["party", "music", "coffee", "movie", "sunny", "holiday", "pizza", "garden"]
SHARED = ["today", "city", "people", "news", "big", "near", "road", "again"]
PROBS = ["prob_0", "prob_1"]


def crafted_rows(rows: int, seed: int, id_start: int = 0) -> pd.DataFrame:
    """Tweets of class words mixed with shared words (about one in seven takes the other class's words), and every sixth
    row a near duplicate of the row before it (a link and a mention added, upper case)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(rows):
        label = int(rng.integers(2))
        if i % 6 == 5:
            texts.append(f"@someone {texts[-1].upper()} http://t.co/x{i}")
            labels.append(labels[-1])
            continue
        own = (CALM, DISASTER)[1 - label if rng.random() < 0.15 else label]
        words = [*rng.choice(own, 2), *rng.choice(SHARED, 3), f"w{i}"]
        texts.append(" ".join(rng.permutation(words)))
        labels.append(label)
    return pd.DataFrame({"id": range(id_start, id_start + rows), "text": texts, "target": labels})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train.csv (96 rows), its own validation.csv (24 rows) and an unlabelled test.csv (20 rows)."""
    directory = tmp_path_factory.mktemp("folds_data")
    crafted_rows(96, seed=1).to_csv(directory / "train.csv", index=False)
    crafted_rows(24, seed=2, id_start=1000).to_csv(directory / "validation.csv", index=False)
    crafted_rows(20, seed=3, id_start=5000).drop(columns="target").to_csv(directory / "test.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory, data_dir):
    config = resolve_config("tfidf", overrides={"data": {"source": str(data_dir), "folds": 3}})
    out = tmp_path_factory.mktemp("folds_run") / "run"
    return out, train(config, out)


def tfidf_run(out, data_dir, **data):
    config = resolve_config("tfidf", overrides={"data": {"source": str(data_dir), **data}})
    train(config, out)
    return out


@pytest.mark.parametrize("duplicates", ["keep", "group"])
def test_folds_cover_every_labelled_row_once_stratified_and_groups_never_straddle(data_dir, duplicates):
    config = DataConfig(source=str(data_dir), folds=4, duplicates=duplicates)
    whole = load_splits(config)
    labelled = pd.concat([pd.read_csv(data_dir / name) for name in ("train.csv", "validation.csv")])
    assert whole.validation["id"].astype(int).tolist() == labelled["id"].tolist()  # train + validation, in order
    assert np.bincount(whole.folds).sum() == 120 and set(whole.folds) == {0, 1, 2, 3}
    held_out = []
    for fold in range(4):
        part = load_splits(config.model_copy(update={"fold": fold}))
        assert set(part.train["id"]).isdisjoint(part.validation["id"])
        assert len(part.train) + len(part.validation) == 120
        held_out += part.validation["id"].tolist()
        positives = part.validation["label"].mean()
        assert abs(positives - labelled["target"].mean()) < 0.12  # stratified by label
    assert sorted(held_out) == sorted(labelled["id"].astype(str).tolist())  # each row held out exactly once
    fold_of_group = pd.Series(whole.folds).groupby(normalise_texts(whole.validation["text"]).to_numpy()).nunique()
    straddling = int((fold_of_group > 1).sum())
    # 20 near-duplicate pairs: grouping keeps each in one fold; a plain stratified split scatters some of them
    assert straddling == 0 if duplicates == "group" else straddling > 0


def test_a_fold_outside_the_folds_or_too_many_folds_is_refused(data_dir, cli, tmp_path):
    done = cli("train", "--model", "tfidf", "--data", data_dir, "--folds", "3", "--fold", "3", "--out", tmp_path / "r")
    assert done.code == 2 and "data.fold 3 needs data.folds greater than it" in done.stderr
    done = cli("train", "--model", "tfidf", "--data", data_dir, "--folds", "80", "--out", tmp_path / "r")
    assert done.code == 2 and "data.folds 80 needs at least 80 rows of every class" in done.stderr
    assert not (tmp_path / "r").exists()


def test_folds_run_records_out_of_fold_metrics_threshold_and_interval(folds_run, data_dir):
    out, summary = folds_run
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"id": str})
    assert oof.columns.tolist() == ["id", "text", "label", "prediction", "prob_0", "prob_1"]
    labelled = pd.concat([pd.read_csv(data_dir / name, dtype={"id": str}) for name in ("train.csv", "validation.csv")])
    assert sorted(oof["id"]) == sorted(labelled["id"]) and oof["id"].is_unique
    assert oof["text"].tolist() == labelled["text"].tolist()
    labels, probabilities = oof["label"].to_numpy(), oof[PROBS].to_numpy()
    assert summary.val == classification_metrics(labels, probabilities.argmax(axis=1), 2)
    assert summary.threshold == pytest.approx(best_threshold(labels, probabilities[:, 1]), abs=1e-6)
    intervals = bootstrap_metrics(labels, probabilities.argmax(axis=1), 2)
    assert summary.val_intervals["f1"] == pytest.approx((intervals["f1"].low, intervals["f1"].high), abs=1e-6)
    assert summary.val_intervals["f1"][0] < summary.val.f1 < summary.val_intervals["f1"][1]
    assert summary.kind == "ensemble" and summary.rows == {"train": 120, "validation": 120, "test": 20}
    # each row's probabilities are those of the fold run that held it out, and the test's the folds' mean
    members = [out / "members" / f"fold-{fold}" for fold in range(3)]
    member_oof = pd.concat([pd.read_csv(m / "val_predictions.csv", dtype={"id": str}) for m in members])
    merged = oof.merge(member_oof, on="id", suffixes=("", "_member"))
    assert len(merged) == 120
    np.testing.assert_allclose(merged[PROBS].to_numpy(), merged[["prob_0_member", "prob_1_member"]].to_numpy())
    tests = [pd.read_csv(m / "test_predictions.csv")[PROBS].to_numpy() for m in members]
    own_test = pd.read_csv(out / "test_predictions.csv")[PROBS].to_numpy()
    np.testing.assert_allclose(own_test, np.mean(tests, axis=0), atol=2e-6)
    assert [RunDir(m).config().data.fold for m in members] == [0, 1, 2]


def test_predict_on_a_folds_run_is_the_mean_of_its_members(folds_run, data_dir, cli, tmp_path):
    out, summary = folds_run
    texts = pd.read_csv(data_dir / "test.csv")["text"].tolist()
    members = [load_classifier(out / "members" / f"fold-{fold}").predict_proba(texts) for fold in range(3)]
    expected = np.mean(members, axis=0)
    np.testing.assert_allclose(load_classifier(out).predict_proba(texts), expected, atol=1e-12)
    done = cli("predict", "--run", out, "--data", data_dir / "test.csv", "--out", tmp_path / "p.csv")
    assert done.code == 0, done.stderr
    predicted = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(predicted["score"], expected[:, 1], atol=1e-6)
    assert predicted["target"].tolist() == (expected[:, 1] >= summary.threshold).astype(int).tolist()


def test_serve_answers_with_the_folds_average_and_its_threshold(folds_run, data_dir):
    out, summary = folds_run
    texts = pd.read_csv(data_dir / "test.csv")["text"].tolist()[:5]
    app = create_app(load_classifier(out), RunDir(out).summary(), ServeSettings(gather_seconds=0))
    with TestClient(app) as client:
        answer = client.post("/predict", json={"texts": texts}).json()
    assert answer["threshold"] == summary.threshold
    expected = np.mean(
        [load_classifier(m).predict_proba(texts)[:, 1] for m in (out / "members").glob("fold-*")], axis=0
    )
    np.testing.assert_allclose([p["score"] for p in answer["predictions"]], expected, atol=1e-6)


def test_a_folds_run_exports_as_a_copy_and_refuses_merge_in_one_line(folds_run, data_dir, cli, tmp_path):
    out, _ = folds_run
    assert cli("export", "--run", out, "--out", tmp_path / "copy").code == 0
    copy = tmp_path / "copy"
    assert not list(copy.rglob("*_predictions.csv"))  # members ship without their prediction files too
    texts = pd.read_csv(data_dir / "test.csv")["text"].tolist()
    np.testing.assert_allclose(load_classifier(copy).predict_proba(texts), load_classifier(out).predict_proba(texts))
    done = cli("export", "--run", out, "--out", tmp_path / "merged", "--merge")
    assert done.code == 2 and done.stderr.count("\n") == 1 and "an ensemble run averages several runs" in done.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_resume_keeps_finished_folds_and_trains_the_rest(data_dir, cli, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "tfidf", "--data", data_dir, "--folds", "3", "--out", out]
    assert cli(*args).code == 0
    first = json.loads((out / "summary.json").read_text())
    kept = (out / "members" / "fold-0" / "summary.json").stat().st_mtime_ns
    for name in ("members/fold-2/summary.json", "members/ensemble.json", "summary.json"):
        (out / name).unlink()  # as if killed while fold 2 was being recorded
    assert cli(*args).code == 2  # without --resume the run is not touched
    done = cli(*args, "--resume")
    assert done.code == 0, done.stderr
    assert (out / "members" / "fold-0" / "summary.json").stat().st_mtime_ns == kept  # not trained again
    assert (out / "members" / "fold-2" / "summary.json").is_file()
    resumed = json.loads((out / "summary.json").read_text())
    for record in (first, resumed):
        record.pop("train_seconds"), record.pop("peak_memory_mb"), record.pop("notes")
    assert resumed == first


def test_patience_stops_each_fold_on_its_own_validation(tiny_models, small_data, tmp_path):
    tweets = tmp_path / "tweets.csv"
    pd.read_csv(small_data / "train.csv").head(96).to_csv(tweets, index=False)
    # an lr this small leaves the weights as they are: no epoch after the first is better on any fold (and
    # batches of 16 rows keep it to 3 steps an epoch, where a token budget would take at least 50)
    overrides = {
        "data": {"source": str(tweets), "folds": 2},
        "train": {"epochs": 4, "patience": 1, "lr": 1e-12, "batch_tokens": 0, "batch_size": 16, "max_length": 32},
    }
    summary = train(resolve_config(str(tiny_models["roberta"]), overrides=overrides), tmp_path / "run")
    for fold in range(2):
        member = RunDir(tmp_path / "run" / "members" / f"fold-{fold}")
        assert member.summary().stopped_early_after == 2 and member.summary().rows["validation"] == 48
        assert [row["epoch"] for row in member.metrics()] == [1, 2]
    assert sum("stopped early after epoch 2" in note for note in summary.notes) == 2
    assert summary.rows["validation"] == 96


@pytest.mark.slow
def test_weights_are_fitted_on_validation_only(data_dir, tmp_path):
    """The same members scored on two different test files (other texts, other labels) get the same weights."""
    other_test = tmp_path / "other_test.csv"
    crafted_rows(20, seed=9, id_start=7000).to_csv(other_test, index=False)  # labelled, unlike test.csv
    weights, tests = [], []
    for name, test in (("a", data_dir / "test.csv"), ("b", other_test)):
        data = DataConfig(source=str(data_dir), test=str(test))
        members = {
            "full": tfidf_run(tmp_path / name / "full", data_dir, test=str(test)),
            "capped": tfidf_run(tmp_path / name / "capped", data_dir, test=str(test), max_train_rows=30),
        }
        summary = ensemble_of_runs(members, tmp_path / name / "ensemble", load_splits(data), data)
        weights.append(json.loads((tmp_path / name / "ensemble" / "members" / "ensemble.json").read_text()))
        tests.append(summary.test)
    assert weights[0] == weights[1]
    assert tests[0] is None and tests[1] is not None  # only the second test file had labels to score


def test_fitted_weights_maximise_validation_log_likelihood_over_the_grid():
    grid = weight_grid(3)
    assert (
        len(grid) == 66
        and np.allclose(grid.sum(axis=1), 1)
        and {tuple(row) for row in np.eye(3)} <= set(map(tuple, grid))
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    good = np.where(labels[:, None] == [0, 1], 0.8, 0.2)
    noisy = rng.dirichlet([1, 1], 200)
    weights = fit_weights(labels, [noisy, good, noisy[::-1]])
    assert weights.tolist() == [0.0, 1.0, 0.0]  # a perfect-ish member alone beats any mix with noise
    mixed = fit_weights(labels, [good, good[:, ::-1] * 0.5 + good * 0.5])
    assert mixed.tolist() == [1.0, 0.0]
    assert len(weight_grid(8)) <= 5000  # coarser steps for many members


@pytest.mark.slow
def test_members_scored_on_other_rows_are_refused(data_dir, tmp_path):
    run = tfidf_run(tmp_path / "run", data_dir)
    other = load_splits(DataConfig(source=str(data_dir), folds=3, fold=0)).validation
    with pytest.raises(LorabenchError, match="scored other val rows than the ensemble's"):
        member_probabilities(run, "val", other, [0, 1])
    reseeded = tfidf_run(tmp_path / "reseeded", data_dir, split_seed=7)
    data = DataConfig(source=str(data_dir))
    with pytest.raises(LorabenchError, match="reseeded was trained on other data settings than the comparison's"):
        ensemble_of_runs({"run": run, "reseeded": reseeded}, tmp_path / "ensemble", load_splits(data), data)
    assert not (tmp_path / "ensemble").exists()


def test_compare_ensemble_refuses_a_model_of_that_name_before_training(data_dir, tmp_path):
    with pytest.raises(LorabenchError, match="a model named 'ensemble' would take the place of compare --ensemble's"):
        compare(["tfidf", "ensemble"], tmp_path / "cmp", data=str(data_dir), ensemble=True)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_compare_ensemble_adds_a_row_and_a_run_that_predict_accepts(data_dir, tmp_path, in_process, cli):
    config = tmp_path / "compare.yaml"
    models = {"tfidf": {}, "tfidf-small": {"model": {"kind": "tfidf"}, "data": {"max_train_rows": 30}}}
    config.write_text(yaml.safe_dump({"models": models}))
    out = tmp_path / "cmp"
    table = compare(None, out, data=str(data_dir), config_file=config, ensemble=True)
    assert table["model"].tolist() == ["tfidf", "tfidf-small", "ensemble"]
    assert table["status"].tolist() == ["ok", "ok", "ok"]
    ensemble_row = table.iloc[2]
    assert ensemble_row["val_f1"] >= table["val_f1"].iloc[:2].min()
    assert not pd.isna(ensemble_row["val_tied_with_best"]) and ensemble_row["predict_texts_per_s"] > 0
    assert "ensemble" in pd.read_csv(out / "results.csv")["model"].tolist()
    assert "ensemble" in (out / "report.html").read_text()
    run = out / "runs" / "ensemble"
    weights = json.loads((run / "members" / "ensemble.json").read_text())["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    # its val predictions are the members' averaged with the fitted weights
    own = pd.read_csv(run / "val_predictions.csv")[PROBS].to_numpy()
    averaged = sum(
        w * pd.read_csv(out / "runs" / name / "val_predictions.csv")[PROBS].to_numpy() for name, w in weights.items()
    )
    np.testing.assert_allclose(own, averaged, atol=2e-6)
    done = cli("predict", "--run", run, "--data", data_dir / "test.csv", "--out", tmp_path / "p.csv")
    assert done.code == 0, done.stderr
    texts = pd.read_csv(data_dir / "test.csv")["text"].tolist()
    members = sum(w * load_classifier(out / "runs" / name).predict_proba(texts) for name, w in weights.items())
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["score"], members[:, 1], atol=1e-6)


def test_compare_ensemble_with_one_trained_model_is_a_failed_row(data_dir, tmp_path, in_process):
    table = compare(["tfidf", "/nonexistent/model"], tmp_path / "cmp", data=str(data_dir), ensemble=True)
    assert table["status"].tolist() == ["ok", "failed", "failed"]
    assert table.iloc[2]["error"] == "an ensemble needs at least two trained models, not 1"
    assert not (tmp_path / "cmp" / "runs" / "ensemble").exists()
