"""`compare` and `report`: identical splits, per-model settings, failures recorded, re-rendering; the tfidf baseline;
bootstrap intervals and the paired test against the best model, training seeds, inference cost, the verdict and
the data checks; report.html in a real headless browser (Debian's Chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lorabench.api import compare, render_report, resolve_config, train
from lorabench.core.config import DataConfig
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import best_threshold
from lorabench.core.schemas import CompareManifest, InferenceCost
from lorabench.core.storage import safe_dir_name as run_dir_name
from lorabench.core.uncertainty import bootstrap_metrics
from lorabench.data.checks import check_texts
from lorabench.data.sources import load_splits
from lorabench.models.tfidf import TfidfClassifier
from lorabench.workflows.label_issues import find_label_issues
from lorabench.workflows.members import CompareConfig, load_compare_config, plan_runs

MISSING_MODEL = "/nonexistent/model"
CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 2600


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, tiny_models, small_data):
    """tfidf, a model that cannot load, and a tiny RoBERTa capped at 120 training rows, compared on 240 tweets.
    Shared: tests read it or copy it; the one that re-renders it leaves it as it was."""
    roberta = str(tiny_models["roberta"])
    config_file = tmp_path_factory.mktemp("compare_config") / "compare.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "train": {"batch_size": 16, "lr": 1e-3, "max_length": 48},
                "models": {roberta: {"data": {"max_train_rows": 120}, "lora": {"r": 4}}},
            }
        )
    )
    out = tmp_path_factory.mktemp("comparison") / "out"
    table = compare(["tfidf", MISSING_MODEL, roberta], out, data=str(small_data), epochs=1, config_file=config_file)
    return out, table, roberta


def test_a_failing_model_is_recorded_and_the_next_one_still_runs(comparison):
    out, table, roberta = comparison
    assert table["model"].tolist() == ["tfidf", MISSING_MODEL, roberta]
    assert table["status"].tolist() == ["ok", "failed", "ok"]
    failed = table.iloc[1]
    assert failed["error"] == f"model path does not exist: {MISSING_MODEL}"
    assert pd.isna(failed["val_f1"])
    results = pd.read_csv(out / "results.csv")
    assert results["status"].tolist() == ["ok", "failed", "ok"]
    assert "failed: model path does not exist" in (out / "results.md").read_text()
    manifest = json.loads((out / "compare.json").read_text())
    assert [entry["status"] for entry in manifest["models"]] == ["ok", "failed", "ok"]


def test_every_model_is_scored_on_the_identical_split(comparison, small_data):
    out, table, roberta = comparison
    expected = load_splits(DataConfig(source=str(small_data))).validation
    run_dirs = [out / "runs" / "tfidf", out / "runs" / run_dir_name(roberta)]
    for run_dir in run_dirs:
        validation = pd.read_csv(run_dir / "val_predictions.csv", dtype={"id": str})
        assert validation["id"].tolist() == expected["id"].tolist()
        assert validation["label"].tolist() == expected["label"].tolist()
    # the row cap only shortens the training part: validation (48 rows) and test (40) stay shared
    summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in run_dirs]
    assert [s["rows"] for s in summaries] == [
        {"train": 192, "validation": 48, "test": 40},
        {"train": 120, "validation": 48, "test": 40},
    ]
    assert table["train_rows"].tolist()[0::2] == [192, 120]
    assert "All 2 trained models were scored on the same 48 validation rows" in (out / "report.html").read_text()


def test_results_carry_the_run_records_numbers(comparison):
    out, table, roberta = comparison
    for _, row in table[table["status"] == "ok"].iterrows():
        run_dir = out / "runs" / ("tfidf" if row["model"] == "tfidf" else run_dir_name(roberta))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["val_f1"] == summary["val"]["f1"]
        assert row["train_seconds"] == summary["train_seconds"]
        assert row["peak_memory_mb"] == summary["peak_memory_mb"] > 0
        assert row["trainable_params"] == summary["trainable_params"]
    lora = table.iloc[2]
    assert lora["epochs"] == 1 and lora["trainable_percent"] < 100
    lora_config = yaml.safe_load((out / "runs" / run_dir_name(roberta) / "config.yaml").read_text())
    assert lora_config["train"]["max_length"] == 48 and lora_config["lora"]["r"] == 4
    assert table.iloc[0]["trainable_percent"] == 100
    assert {p.name for p in (out / "charts").iterdir()} == {
        "f1.png",
        "train_time.png",
        "pr_curves.png",
        "cost.png",
        "cost_train_seconds.png",
        "cost_train_memory.png",
        "confusion_tfidf.png",
        f"confusion_{run_dir_name(roberta)}.png",
    }


def test_every_metric_has_a_bootstrap_interval_and_a_paired_test_against_the_best(comparison):
    out, table, roberta = comparison
    trained = table[table["status"] == "ok"]
    best = trained.loc[trained["val_f1_mean"].idxmax(), "model"]
    for _, row in trained.iterrows():
        run_dir = out / "runs" / ("tfidf" if row["model"] == "tfidf" else run_dir_name(roberta))
        validation = pd.read_csv(run_dir / "val_predictions.csv")
        decisions = validation[["prob_0", "prob_1"]].to_numpy().argmax(axis=1)
        intervals = bootstrap_metrics(validation["label"], decisions, 2, resamples=1000, seed=0)
        for metric, interval in intervals.items():
            assert (row[f"val_{metric}_low"], row[f"val_{metric}_high"]) == (interval.low, interval.high)
            assert row[f"val_{metric}_low"] <= row[f"val_{metric}"] <= row[f"val_{metric}_high"]
        assert row["val_f1_mean"] == row["val_f1"] and row["val_f1_sd"] == 0.0 and row["seeds"] == 1
        assert 0.0 <= row["val_prob_worse"] <= 1.0
        if row["model"] == best:
            assert row["rank"] == 1 and row["val_tied_with_best"] and row["val_prob_worse"] == 0.0
    assert trained["rank"].tolist() == list(trained["val_f1_mean"].rank(ascending=False, method="first"))
    assert pd.isna(table.iloc[1]["val_tied_with_best"]) and pd.isna(table.iloc[1]["rank"])
    results = pd.read_csv(out / "results.csv")
    assert {"val_f1_low", "val_f1_high", "val_tied_with_best", "val_prob_worse", "val_f1_mean", "val_f1_sd"} <= set(
        results.columns
    )


def test_the_cost_of_using_each_model_is_measured_and_reported(comparison):
    out, table, roberta = comparison
    for name, run in (("tfidf", "tfidf"), (roberta, run_dir_name(roberta))):
        cost = InferenceCost.model_validate_json((out / "runs" / run / "cost.json").read_text())
        assert cost.texts == 48 and cost.latency_calls >= 50 and cost.device == "cpu"
        row = table[table["model"] == name].iloc[0]
        for column in ("predict_texts_per_s", "latency_p50_ms", "latency_p95_ms", "inference_peak_mb", "size_mb"):
            assert row[column] == getattr(cost, column) and row[column] > 0, column
        assert row["latency_p50_ms"] <= row["latency_p95_ms"]
    lora, tfidf = table.iloc[2], table.iloc[0]
    assert lora["merged_size_mb"] == pytest.approx(lora["total_params"] * 4 / 2**20, abs=0.1)
    assert pd.isna(tfidf["merged_size_mb"])  # nothing to merge: every parameter trained
    markdown = (out / "results.md").read_text()
    assert "predict texts/s" in markdown and "latency p95 ms" in markdown and "size MB" in markdown


def test_report_opens_with_the_verdict_and_shows_the_data_checks(comparison):
    out, table, _ = comparison
    html = (out / "report.html").read_text()
    best = table.loc[table["rank"] == 1, "model"].item()
    verdict = html[html.index('<div class="verdict"') : html.index("<h2>Results</h2>")]
    assert f"Best by validation F1: {best} (" in verdict
    assert html.index('id="verdict"') < html.index('id="results"')
    checks = html[html.index('id="data-checks"') :]
    assert "repeated texts (labelled rows)" in checks and "validation rows with a near duplicate in train" in checks
    manifest = CompareManifest.model_validate_json((out / "compare.json").read_text())
    splits = load_splits(DataConfig.model_validate(manifest.data))
    assert manifest.data_checks == check_texts(splits.train, splits.validation, splits.test, "text", "label")


def test_a_comparison_recorded_before_seeds_costs_and_checks_still_renders(comparison, tmp_path):
    out, table, _ = comparison
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads((old / "compare.json").read_text())
    for key in ("seeds", "data_checks"):
        del manifest[key]
    for entry in manifest["models"]:
        del entry["seeds"], entry["cost_error"]
    (old / "compare.json").write_text(json.dumps(manifest))
    for cost in old.glob("runs/*/cost.json"):
        cost.unlink()
    rendered = render_report(old)
    assert rendered["val_f1"].tolist()[0::2] == table["val_f1"].tolist()[0::2]
    assert rendered["predict_texts_per_s"].isna().all()
    assert "Not recorded: this comparison was made before compare checked" in (old / "report.html").read_text()


def test_seeds_train_each_model_several_times_and_report_mean_and_sd(
    cli, tmp_path, tiny_models, small_data, in_process
):
    roberta = str(tiny_models["roberta"])
    settings = tmp_path / "compare.yaml"
    settings.write_text(
        yaml.safe_dump({"train": {"max_length": 48, "batch_size": 16, "lr": 1e-3}, "data": {"max_train_rows": 80}})
    )
    out = tmp_path / "out"
    result = cli("-q", "compare", "--models", roberta, "--data", small_data, "--epochs", "1", "--seeds", "2",
                 "--config", settings, "--out", out)  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"Best by validation F1: {roberta} (")
    model_dir = out / "runs" / run_dir_name(roberta)
    assert sorted(p.name for p in model_dir.iterdir()) == ["seed-0", "seed-1"]
    summaries = [json.loads((model_dir / f"seed-{k}" / "summary.json").read_text()) for k in (0, 1)]
    seeds = [yaml.safe_load((model_dir / f"seed-{k}" / "config.yaml").read_text())["train"]["seed"] for k in (0, 1)]
    assert seeds == [0, 1]
    f1 = np.array([summary["val"]["f1"] for summary in summaries])
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["seeds"] == 2
    assert row["val_f1_mean"] == pytest.approx(f1.mean(), abs=1e-12)
    assert row["val_f1_sd"] == pytest.approx(f1.std(ddof=1), abs=1e-12)
    assert row["val_f1"] == f1[0]  # the first seed's run stands for the model in intervals, charts and cost
    assert (model_dir / "seed-0" / "cost.json").is_file() and not (model_dir / "seed-1" / "cost.json").exists()
    manifest = CompareManifest.model_validate_json((out / "compare.json").read_text())
    assert manifest.seeds == 2
    assert [run.run_dir for run in manifest.models[0].seeds] == [f"runs/{model_dir.name}/seed-{k}" for k in (0, 1)]
    assert "± " in (out / "results.md").read_text()


def test_report_shows_the_likeliest_label_errors_of_a_run_that_has_them(comparison, small_data, tmp_path):
    out, _, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert "Likely label errors" not in (copy / "report.html").read_text()
    issues = find_label_issues(copy / "runs" / "tfidf", DataConfig(source=str(small_data)))
    assert issues.only_validation and issues.flagged_rows > 0
    render_report(copy)
    html = (copy / "report.html").read_text()
    section = html[html.index("<h2>Likely label errors</h2>") : html.index("<h2>Runs</h2>")]
    assert f"tfidf: {issues.flagged_rows} rows flagged" in section
    assert section.count("<tr>") == 1 + min(issues.flagged_rows, 10)  # the header and the top rows
    first = issues.top[0]
    assert f"<td>{first['id']}</td>" in section and f"<td>{first['given_label_prob']}</td>" in section


def test_report_rerenders_the_same_outputs_without_training(comparison):
    from typer.testing import CliRunner

    from lorabench.cli import app

    out, _, _ = comparison
    csv_before, md_before = (out / "results.csv").read_text(), (out / "results.md").read_text()
    html_before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    (out / "charts" / "f1.png").unlink()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "results.csv").read_text() == csv_before
    assert (out / "results.md").read_text() == md_before
    assert md_before in result.output
    assert (out / "report.html").read_text() == html_before
    assert (out / "charts" / "f1.png").is_file()


def test_report_of_a_directory_without_comparison_is_refused(tmp_path):
    with pytest.raises(LorabenchError, match="holds no comparison"):
        render_report(tmp_path)


def test_settings_precedence_preset_shared_flags_then_model_entry():
    settings = CompareConfig.model_validate(
        {
            "train": {"epochs": 7, "seed": 3},
            "models": {"minilm": {"train": {"epochs": 4}, "data": {"max_train_rows": 50}}},
        }
    )
    plans = plan_runs(["minilm", "smollm2"], settings, data="some/data", epochs=2, max_train_rows=300)
    assert plans["minilm"].train.epochs == 4 and plans["smollm2"].train.epochs == 2
    assert plans["minilm"].data.max_train_rows == 50 and plans["smollm2"].data.max_train_rows == 300
    assert plans["minilm"].train.lr == 2e-3 and plans["smollm2"].train.lr == 1e-3  # presets kept
    assert plans["minilm"].train.seed == plans["smollm2"].train.seed == 3
    assert plans["minilm"].data.source == plans["smollm2"].data.source == "some/data"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"models": {"minilm": {"train": {"epoch": 2}}}}, "unknown compare config key 'models.minilm.train.epoch'"),
        (
            {"models": {"minilm": {"data": {"source": "other"}}}},
            "unknown compare config key 'models.minilm.data.source'",
        ),
        ({"train": {"epochs": 0}}, "invalid compare config value for 'train.epochs'"),
    ],
)
def test_bad_compare_config_fails_before_anything_is_written(config, message, tmp_path, small_data):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(LorabenchError, match=message):
        load_compare_config(path)
    with pytest.raises(LorabenchError, match=message):
        compare(["tfidf"], tmp_path / "out", data=str(small_data), config_file=path)
    assert not (tmp_path / "out").exists()


def test_compare_refuses_duplicates_and_a_non_empty_out(tmp_path, small_data):
    with pytest.raises(LorabenchError, match="listed twice: tfidf"):
        compare(["tfidf", "tfidf"], tmp_path / "a", data=str(small_data))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    with pytest.raises(LorabenchError, match="not empty"):
        compare(["tfidf"], tmp_path / "b", data=str(small_data))
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["keep.txt"]


def test_tfidf_baseline_on_real_tweets_and_its_pickle_free_record(tweets_dir, tmp_path):
    config = resolve_config("tfidf", overrides={"data": {"source": str(tweets_dir)}})
    summary = train(config, tmp_path / "run")
    assert summary.val.f1 >= 0.75
    assert summary.rows == {"train": 6090, "validation": 1523, "test": 3263}
    assert summary.best_epoch == 1 and summary.trainable_percent == 100
    assert summary.trainable_params == summary.vocabulary_size + 1  # one weight per n-gram, one bias
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1]
    files = {p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert files == {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "val_predictions.csv",
        "test_predictions.csv",
        "tfidf/weights.safetensors",
        "tfidf/vocabulary.json",
        "tfidf/settings.json",
    }

    classifier = TfidfClassifier.load(tmp_path / "run")
    validation = pd.read_csv(tmp_path / "run" / "val_predictions.csv")
    splits = load_splits(config.data)
    probabilities = classifier.predict_proba(splits.validation["text"].tolist())
    assert probabilities.shape == (1523, 2)
    np.testing.assert_allclose(probabilities[:, 1], validation["prob_1"], atol=1e-6)
    assert classifier.label_names == [0, 1]
    assert classifier.threshold == summary.threshold
    best = best_threshold(validation["label"].to_numpy(), probabilities[:, 1])
    assert summary.threshold == pytest.approx(best, abs=1e-6)


def test_tfidf_records_the_cross_validated_c_and_loads_models_saved_in_the_old_single_vectorizer_format(
    small_data, tmp_path
):
    from safetensors.numpy import save_file
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    config = resolve_config("tfidf", overrides={"data": {"source": str(small_data)}})
    summary = train(config, tmp_path / "run")
    settings = json.loads((tmp_path / "run" / "tfidf" / "settings.json").read_text())
    assert set(settings["features"]) == {"word", "char"} and settings["features"]["char"]["analyzer"] == "char_wb"
    chosen = settings["regression"]["C"]
    assert chosen in settings["regression"]["C_grid"] and settings["regression"]["cv_folds"] == 5
    assert f"tfidf: C={chosen} chosen by 5-fold cross-validation F1 on the training split" in summary.notes

    # the format of models saved before feature blocks: one word vectorizer, a vocabulary list, `idf`
    old_settings = {"ngram_range": [1, 2], "min_df": 2, "lowercase": True, "sublinear_tf": False, "norm": "l2",
                    "smooth_idf": True}  # fmt: skip
    splits = load_splits(config.data)
    texts, labels = splits.train["text"].tolist(), splits.train["label"].to_numpy()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2)
    regression = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(texts), labels)
    directory = tmp_path / "run" / "tfidf"
    arrays = {"idf": vectorizer.idf_, "coef": regression.coef_, "intercept": regression.intercept_}
    save_file(arrays, str(directory / "weights.safetensors"))
    terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    (directory / "vocabulary.json").write_text(json.dumps(terms))
    (directory / "settings.json").write_text(json.dumps({"vectorizer": old_settings, "label_names": [0, 1]}))
    old = TfidfClassifier.load(tmp_path / "run")
    validation = splits.validation["text"].tolist()
    expected = regression.predict_proba(vectorizer.transform(validation))
    np.testing.assert_allclose(old.predict_proba(validation), expected, atol=1e-12)
    assert old.regularization_c is None and old.vocabulary_size == len(terms)


def test_tfidf_and_lora_runs_write_the_same_summary_keys(comparison):
    out, _, roberta = comparison
    tfidf = json.loads((out / "runs" / "tfidf" / "summary.json").read_text())
    lora = json.loads((out / "runs" / run_dir_name(roberta) / "summary.json").read_text())
    assert set(lora) <= set(tfidf)
    lora_predictions = pd.read_csv(out / "runs" / run_dir_name(roberta) / "test_predictions.csv")
    tfidf_predictions = pd.read_csv(out / "runs" / "tfidf" / "test_predictions.csv")
    assert (
        list(lora_predictions.columns)
        == list(tfidf_predictions.columns)
        == ["id", "label", "prediction", "prob_0", "prob_1"]
    )


def test_three_string_classes_are_compared_with_macro_scores(tmp_path, in_process):
    rng = np.random.default_rng(0)
    words = {"fire": "emergency", "sunny": "weather", "match": "sport"}
    rows = [
        {"text": f"{word} {' '.join(rng.choice(['a', 'b', 'c', 'd'], 4))}", "target": label}
        for _ in range(40)
        for word, label in words.items()
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "three.csv", index=False)
    table = compare(["tfidf"], tmp_path / "out", data=str(tmp_path / "three.csv"))
    assert table.iloc[0]["status"] == "ok"
    assert table.iloc[0]["val_f1"] == 1.0  # the class word decides, and macro F1 averages the three classes
    summary = json.loads((tmp_path / "out" / "runs" / "tfidf" / "summary.json").read_text())
    assert summary["label_names"] == ["emergency", "sport", "weather"] and summary["threshold"] is None
    charts = tmp_path / "out" / "charts"
    assert (charts / "pr_curves.png").stat().st_size > 10_000  # micro-averaged over the three classes
    assert (charts / "confusion_tfidf.png").stat().st_size > 5_000


def chromium(tmp_path: Path, *arguments) -> str:
    """Run headless Chromium on a page with `arguments` (--screenshot, --dump-dom...); returns its stdout."""
    *flags, page = arguments
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *flags,
            Path(page).as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout


# Appended to a copy of the report: once laid out, the page writes where each results header and per-class row
# sits, so the test reads the browser's own layout from --dump-dom.
LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const box = (element) => { const r = element.getBoundingClientRect(); return [element.textContent, r.left, r.right]; };
  const layout = {
    width: window.innerWidth,
    headers: [...document.querySelectorAll("#results thead tr:last-child th")].map(box),
    perClass: [...document.querySelectorAll("#per-class tbody tr")].map((row) => [...row.cells].map((c) => c.textContent)),
    confusions: [...document.querySelectorAll("img[alt^='confusion matrix']")].map((img) => img.naturalWidth),
  };
  const out = document.createElement("pre");
  out.id = "layout";
  out.textContent = JSON.stringify(layout);
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_four_class_report_shows_macro_f1_per_class_scores_and_confusion_matrices(
    tmp_path, tiny_models, four_class_data, cli, in_process
):
    llama = str(tiny_models["llama"])
    out = tmp_path / "out"
    done = cli("compare", "--models", f"tfidf,{llama}", "-d", four_class_data, "--label-column", "topic",
               "--text-template", "{headline}. {body}", "--id-column", "doc_id", "--epochs", "1", "-o", out)  # fmt: skip
    assert done.code == 0, done.stderr
    assert "Best by validation macro-F1" in done.stdout and "threshold" not in done.stdout
    table = pd.read_csv(out / "results.csv")
    assert table["status"].tolist() == ["ok", "ok"] and table["classes"].tolist() == [4, 4]
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["class"].tolist() == ["business", "politics", "sport", "tech"] * 2
    # macro-F1 is the unweighted mean of the per-class F1 the table shows
    means = per_class.groupby("model", sort=False)["f1"].mean().round(6)
    assert means.tolist() == table["val_f1"].round(6).tolist()
    validation_rows = len(pd.read_csv(Path(__file__).parent / "data" / "four_class" / "train.csv")) // 5  # 20%
    assert per_class.groupby("model")["support"].sum().tolist() == [validation_rows] * 2

    report = (out / "report.html").read_text(encoding="utf-8")
    assert "threshold" not in report.lower()
    page = tmp_path / "probed.html"
    page.write_text(report.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--window-size=1300,2000", "--dump-dom", page)
    layout = json.loads(html.unescape(re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S).group(1)))
    headers = {name: (left, right) for name, left, right in layout["headers"]}
    assert {"macro f1", "macro f1 95% interval", "macro f1 tied with best (P worse)"} <= headers.keys()
    cost = ["predict texts/s", "latency p50 ms", "latency p95 ms", "inference MB", "size MB"]
    assert all(headers[name][1] <= 1300 for name in cost), {name: headers[name] for name in cost}
    assert len(layout["perClass"]) == 8
    tfidf_rows = [row[-5:] for row in layout["perClass"][:4]]
    assert [row[0] for row in tfidf_rows] == ["business", "politics", "sport", "tech"]
    assert [float(row[3]) for row in tfidf_rows] == per_class["f1"].head(4).round(4).tolist()
    assert len(layout["confusions"]) == 2 and min(layout["confusions"]) > 200  # decoded images, one per model
    interval = re.search(r"\[(0\.\d{4}), (0\.\d{4})\]", dom)
    assert interval and float(interval.group(1)) <= table["val_f1"][0] <= float(interval.group(2))


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: apt-get install -y chromium")
def test_report_renders_in_headless_chromium(tmp_path, comparison):
    out, _, _ = comparison  # tfidf, a failed model and a tiny RoBERTa
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<table id="results">' in html and html.count("<tr") >= 3
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    # F1, training time, F1 against prediction throughput, training seconds and training peak memory, two
    # confusion matrices, precision-recall curves
    assert len(images) == 8
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained: nothing fetched from elsewhere

    screenshot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={screenshot}", f"--window-size={WIDTH},{HEIGHT}", out / "report.html")
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (WIDTH, HEIGHT)
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=WIDTH * HEIGHT)
        # a blank or failed page is one or two colours; text, table shading and charts give thousands
        assert len(colours) > 500
        white = max(count for count, colour in colours if colour == (255, 255, 255))
        assert white < 0.9 * WIDTH * HEIGHT
        # matplotlib's first bar colour (#1f77b4) is on screen: the chart images were decoded and drawn
        assert any(colour == (31, 119, 180) for _, colour in colours)
