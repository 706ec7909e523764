"""The CLI is generated from the config: every scalar setting has a flag, `--set` reaches the rest, and
`python -m lorabench` is the same command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from lorabench.core.config import TrainSettings


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
