"""A failed run leaves the output as it was before the command, and says in one line which stage failed, on what,
and what to do next (issue: reliability). Failures are injected at each stage of a tiny LoRA run and a tfidf run."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from lorabench.core import storage
from lorabench.training import lora_recipe, preparation, records

TINY = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--max-length", "48", "--max-train-rows", "64"]


def boom(*args, **kwargs):
    raise RuntimeError("injected failure")


def storage_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


STAGES = {
    "loading": (preparation, "load_base_model", boom, "loading the data and the model failed (RuntimeError"),
    "first epoch": (lora_recipe.LoraRecipe, "_step", boom, "epoch 1 failed (RuntimeError: injected failure)"),
    "scoring": (records, "write_predictions", storage_full, "scoring the best epoch and writing the summary failed"),
    "summary": (storage.RunDir, "write_summary", storage_full, "writing the summary failed (OSError"),
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("out_exists", [False, True], ids=["new out", "empty out"])
def test_a_failure_at_any_stage_leaves_the_output_as_it_was(stage, out_exists, cli, tiny_models, small_data,
                                                            tmp_path, monkeypatch):  # fmt: skip
    owner, name, failure, message = STAGES[stage]
    monkeypatch.setattr(owner, name, failure)
    out = tmp_path / "run"
    if out_exists:
        out.mkdir()
    result = cli("-q", "train", "--model", tiny_models["roberta"], "--data", small_data, "--out", out, *TINY)
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(out.iterdir()) == [] if out_exists else not out.exists()


def test_a_run_that_held_a_finished_run_keeps_it_when_resume_fails(cli, tiny_models, small_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["-q", "train", "--model", tiny_models["roberta"], "--data", small_data, "--out", out, *TINY]
    assert cli(*args).code == 0
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    monkeypatch.setattr(preparation, "load_base_model", boom)
    failed = cli(*args, "--resume")
    assert failed.code == 2 and "loading the data and the model failed" in failed.stderr
    after = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before


def test_tfidf_without_vocabulary_is_one_line_and_leaves_nothing(cli, tmp_path):
    data = tmp_path / "numbers.csv"
    pd.DataFrame({"text": [str(n) for n in range(40)], "target": [n % 2 for n in range(40)]}).to_csv(data, index=False)
    out = tmp_path / "run"
    result = cli("-q", "train", "--model", "tfidf", "--data", data, "--out", out)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "tfidf" in result.stderr and "vocabulary" in result.stderr.lower()
    assert not out.exists()


def test_a_truncated_adapter_names_the_file_and_the_next_step(cli, llama_run, small_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(llama_run, run)
    adapter = run / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    result = cli("-q", "predict", "--run", run, "--data", small_data / "test.csv", "--out", tmp_path / "p.csv")
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert str(run / "adapter") in result.stderr and "train the run again" in result.stderr
    assert not (tmp_path / "p.csv").exists()


def test_a_comparison_that_fails_leaves_no_output(cli, small_data, tmp_path, monkeypatch, in_process):
    from lorabench.workflows import compare

    monkeypatch.setattr(compare, "render", storage_full)
    out = tmp_path / "cmp"
    result = cli("-q", "compare", "--models", "tfidf", "--data", small_data, "--out", out)
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "writing the results and the report failed (OSError" in result.stderr
    assert not out.exists()
