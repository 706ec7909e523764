"""The CLI is generated from the config: every scalar setting has a flag, `--set` reaches the rest, and
`python -m lorabench` is the same command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lorabench.core.config import TrainSettings
from lorabench.workflows.sweep import SweepSettings, make_objective

FOUR_CLASS = Path(__file__).parent / "data" / "four_class"
CLASSES = ["business", "politics", "sport", "tech"]
TEMPLATE = "{headline}. {body}"
COLUMN_FLAGS = ["--label-column", "topic", "--text-template", TEMPLATE, "--id-column", "doc_id"]


def test_every_scalar_train_setting_has_a_flag_with_its_description(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich cuts long option names to the terminal's width
    result = cli("train", "--help")
    assert result.code == 0
    for field in ("warmup", "scheduler", "max_grad_norm", "lr_batch_tokens", "eval_batch_size"):
        assert "--" + field.replace("_", "-") in result.stdout
    assert TrainSettings.model_fields["warmup"].description in " ".join(result.stdout.split())
    assert "--set" in result.stdout and "--lora-r" in result.stdout


def test_flags_and_set_reach_the_run_config(cli, small_data, tmp_path):
    out = tmp_path / "run"
    result = cli("-q", "train", "--model", "tfidf", "--data", small_data, "--out", out, "--seed", "7",
                 "--set", "data.split_seed=3", "--set", "lora.target_modules=[query, value]")  # fmt: skip
    assert result.code == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["seed"] == 7 and config["data"]["split_seed"] == 3
    assert config["lora"]["target_modules"] == ["query", "value"] and config["model"]["kind"] == "tfidf"


def test_model_flag_keeps_a_files_model_settings_unless_the_file_names_another_model(tmp_path):
    from lorabench.core.config import resolve_config

    settings = tmp_path / "settings.yaml"
    settings.write_text("model:\n  pooling: cls\n  config_overrides: {hidden_dropout_prob: 0.0}\n")
    kept = resolve_config("minilm", settings).model
    assert (kept.name, kept.pooling, kept.config_overrides) == ("minilm", "cls", {"hidden_dropout_prob": 0.0})
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  name: mpnet\n  pooling: cls\n")
    replaced = resolve_config("minilm", other).model
    assert (replaced.name, replaced.pooling) == ("minilm", resolve_config("minilm").model.pooling)


def test_a_literal_setting_refuses_other_values_and_set_needs_a_key(cli, small_data, tmp_path):
    refused = cli("train", "--model", "tfidf", "--data", small_data, "--out", tmp_path / "a", "--scheduler", "steep")
    assert refused.code == 2 and "steep" in refused.stderr
    bad_set = cli("train", "--model", "tfidf", "--data", small_data, "--out", tmp_path / "b", "--set", "warmup")
    assert bad_set.code == 2 and bad_set.stderr.strip() == (
        "error: --set takes section.key=value (e.g. train.warmup=0.05), not 'warmup'"
    )
    unknown = cli("train", "--model", "tfidf", "--data", small_data, "--out", tmp_path / "c", "--set", "train.nope=1")
    assert unknown.code == 2 and "unknown config key 'train.nope'" in unknown.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "lorabench", "presets"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tfidf\tscikit-learn" in done.stdout.splitlines()


def test_help_version_and_usage_errors_import_no_command_stack(cli):
    """The stacks load when a command runs; the CLI itself (every flag) imports none of them."""
    heavy = ("torch", "sklearn", "pandas", "fastapi", "optuna", "transformers")
    probe = f"import sys, lorabench.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done
    assert cli("--version").stdout.strip() == "lorabench 0.1.0"
    assert "Missing option '--run'" in one_error_line(cli("predict", "--data", "x.csv"))
    helped = cli("--help").stdout
    assert "--debug " in helped and "<bool>" not in helped  # flags print as flags


def one_error_line(result) -> str:
    """The single `error:` line of a refused command (exit 2, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


@pytest.mark.parametrize("command", ["data", "train", "compare", "sweep", "predict"])
def test_every_command_that_reads_data_has_the_column_flags(command, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    result = cli(command, "--help")
    assert result.code == 0
    for flag in ("--label-column", "--text-column", "--text-template", "--id-column"):
        assert flag in result.stdout, (command, flag)


def test_predict_names_and_builds_its_columns_as_the_run_did(cli, tmp_path):
    run = tmp_path / "run"
    trained = cli("-q", "train", "--model", "tfidf", "--data", FOUR_CLASS, *COLUMN_FLAGS, "--out", run)
    assert trained.code == 0, trained.stderr
    recorded = pd.read_csv(run / "test_predictions.csv", dtype={"id": str})
    probabilities = [f"prob_{name}" for name in CLASSES]

    # no column flags: the run's id column, template and label column, and its probabilities to the 6th decimal
    result = cli("-q", "predict", "--run", run, "--data", FOUR_CLASS / "test.csv", "--out", tmp_path / "p.csv",
                 "--probabilities")  # fmt: skip
    assert result.code == 0, result.stderr
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"doc_id": str})
    assert list(predicted.columns) == ["doc_id", "topic", "score", *probabilities]
    assert (
        predicted["doc_id"].tolist()
        == recorded["id"].tolist()
        == pd.read_csv(FOUR_CLASS / "test.csv")["doc_id"].tolist()
    )
    np.testing.assert_allclose(predicted[probabilities], recorded[probabilities], atol=1e-6)
    assert predicted["topic"].tolist() == recorded["prediction"].tolist()
    np.testing.assert_allclose(predicted["score"], recorded[probabilities].max(axis=1), atol=1e-6)
    assert json.loads(result.stdout)["label_counts"] == recorded["prediction"].value_counts().reindex(CLASSES).to_dict()

    # flags win over the run's; --submission is still Kaggle's id,target
    renamed = cli("-q", "predict", "--run", run, "--data", FOUR_CLASS / "test.csv", "--out", tmp_path / "r.csv",
                  "--label-column", "label", "--id-column", "headline")  # fmt: skip
    assert renamed.code == 0, renamed.stderr
    assert list(pd.read_csv(tmp_path / "r.csv").columns) == ["headline", "label", "score"]
    cli("-q", "predict", "--run", run, "--data", FOUR_CLASS / "test.csv", "--out", tmp_path / "s.csv", "--submission")
    submission = pd.read_csv(tmp_path / "s.csv", dtype={"id": str})
    assert list(submission.columns) == ["id", "target"] and submission["id"].tolist() == recorded["id"].tolist()
    assert submission["target"].tolist() == recorded["prediction"].tolist()

    def refused(*flags: str) -> str:
        out = tmp_path / "refused.csv"
        line = one_error_line(cli("predict", "--run", run, "--data", FOUR_CLASS / "test.csv", "--out", out, *flags))
        assert not out.exists()
        return line

    assert "named 'doc_id'" in refused("--label-column", "doc_id")
    assert "does not have: summary" in refused("--text-template", "{summary}")
    assert "leave out --probabilities" in refused("--submission", "--probabilities")


def test_data_and_compare_take_the_column_flags_without_a_config(cli, tmp_path, in_process):
    result = cli("data", "--data", FOUR_CLASS, *COLUMN_FLAGS, "--json")
    assert result.code == 0, result.stderr
    stats = json.loads(result.stdout)
    train = pd.read_csv(FOUR_CLASS / "train.csv")
    assert stats["label_names"] == CLASSES and stats["splits"]["test"]["rows"] == len(
        pd.read_csv(FOUR_CLASS / "test.csv")
    )
    texts = (train["headline"] + ". " + train["body"]).str.len()  # the template built the texts that were measured
    assert max(entry["max_chars"] for entry in stats["splits"].values() if "class_counts" in entry) == texts.max()
    unknown = cli("data", "--data", FOUR_CLASS, "--text-template", TEMPLATE, "--label-column", "subject")
    assert "no label column 'subject'" in one_error_line(unknown)

    out = tmp_path / "cmp"
    compared = cli("-q", "compare", "--models", "tfidf", "--data", FOUR_CLASS, *COLUMN_FLAGS, "--out", out)
    assert compared.code == 0, compared.stderr
    config = yaml.safe_load((out / "runs" / "tfidf" / "config.yaml").read_text())["data"]
    assert (config["label_column"], config["text_template"], config["id_column"]) == ("topic", TEMPLATE, "doc_id")
    validation = pd.read_csv(out / "runs" / "tfidf" / "val_predictions.csv")
    assert validation["id"].str.match(r"a\d{4}$").all() and set(validation["prediction"]) <= set(CLASSES)


def test_sweep_hands_the_column_flags_to_every_trial_and_agent(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    out = tmp_path / "sweep"
    result = cli("sweep", "--backend", "wandb", "--model", "tfidf", "--data", FOUR_CLASS, *COLUMN_FLAGS, "--out", out)
    assert "W&B needs an API key" in one_error_line(result)  # after the data was read with the columns
    command = yaml.safe_load((out / "wandb_sweep.yaml").read_text())["command"]
    assert all(flag in command for flag in COLUMN_FLAGS)
    settings = SweepSettings(model="tfidf", data=str(FOUR_CLASS), out=out, columns={"label_column": "topic"})
    assert make_objective(settings).config({}).data.label_column == "topic"


def test_a_log_gets_every_path_on_one_line(cli, tmp_path):
    """stderr is not a terminal here, as in `lorabench train ... 2> log.txt`: no line is wrapped."""
    out = tmp_path / ("a-directory-name-long-enough-to-pass-eighty-columns-" * 2) / "run"
    result = cli("train", "--model", "tfidf", "--data", FOUR_CLASS, *COLUMN_FLAGS, "--out", out)
    assert result.code == 0, result.stderr
    assert any(line.endswith(f"record in {out}") for line in result.stderr.splitlines())


def test_an_internal_error_exits_1_and_a_bad_input_exits_2_each_in_one_line(cli, monkeypatch, tmp_path):
    def bug():
        raise KeyError("label_names")  # a lorabench bug, not the user's input

    monkeypatch.setattr("lorabench.cli.preset_names", bug)
    internal = cli("presets")
    assert internal.code == 1
    assert internal.stderr.strip() == (
        "internal error (KeyError): 'label_names'; rerun with --debug to see the traceback"
    )
    bad = cli("train", "--model", "tfidf", "--data", tmp_path / "missing.csv", "--out", tmp_path / "run")
    assert bad.code == 2 and bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
