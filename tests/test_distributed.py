"""Data parallelism: two processes (gloo on CPU) take the same steps as one process with twice the batch, write one
record from rank 0 and score the whole validation set. The equivalence runs are launched as torchrun's workers
(tests/forked.py: forked, with torchrun's variables); `compare` and a worker's shutdown run under torchrun itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import forked
from conftest import failure_text, torchrun

pytestmark = pytest.mark.slow  # processes of their own, torchrun

CLI = str(Path(sys.executable).parent / "lorabench")


def _train(tmp: Path, data: Path, model: str, out: str, processes: int, batch_tokens: int, extra: list[str]) -> dict:
    """`lorabench train` in `processes` processes of one thread each; its summary."""
    command = [
        sys.executable,
        "-m",
        "lorabench.cli",
        "-q",
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(tmp / out),
        "--batch-tokens",
        str(batch_tokens),
        "--precision",  # the launches must agree to fp32 rounding; bf16 steps (auto on some CPUs) round at 1e-3
        "fp32",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = forked.launch(command, env, processes) if processes > 1 else forked.run(command, env)
    assert done.returncode == 0, failure_text(done)
    return json.loads((tmp / out / "summary.json").read_text())


@pytest.fixture(scope="module")
def tiny_llama_runs(tiny_models, small_data, tmp_path_factory):
    """A dropout-free tiny Llama (LoRA dropout 0): the two launches must agree to float rounding."""
    tmp = tmp_path_factory.mktemp("ddp_tiny")
    extra = ["--lora-dropout", "0", "--lr", "3e-3", "--epochs", "2"]
    return (
        _train(tmp, small_data, str(tiny_models["llama"]), "single", 1, 512, extra),
        _train(tmp, small_data, str(tiny_models["llama"]), "ddp", 2, 256, extra),
        tmp,
    )


def test_two_processes_take_the_steps_of_one_with_twice_the_batch(tiny_llama_runs):
    single, ddp, tmp = tiny_llama_runs
    assert (single["processes"], ddp["processes"]) == (1, 2)
    # 192 short rows: the 50-step floor lowers the 512-token global budget, and lr follows the batch trained:
    # sqrt(tokens / train.lr_batch_tokens)
    assert single["effective_batch"] == ddp["effective_batch"] and single["effective_batch"]["tokens"] < 512
    assert single["lr"] == ddp["lr"] == pytest.approx(3e-3 * (single["effective_batch"]["tokens"] / 2048) ** 0.5)
    losses = [
        [json.loads(line)["train_loss"] for line in (tmp / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("single", "ddp")
    ]
    assert len(losses[0]) == len(losses[1]) == 2
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert ddp["val"] == pytest.approx(single["val"], abs=1e-6)


def test_rank_zero_writes_one_record_over_the_whole_validation_set(tiny_llama_runs, small_data):
    single, ddp, tmp = tiny_llama_runs
    predictions = pd.read_csv(tmp / "ddp" / "val_predictions.csv")
    assert len(predictions) == ddp["rows"]["validation"] == single["rows"]["validation"] == 48
    lines = (tmp / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer: no duplicated epochs
    single_probs = pd.read_csv(tmp / "single" / "val_predictions.csv")["prob_1"]
    np.testing.assert_allclose(predictions["prob_1"], single_probs, atol=1e-4)


def test_full_fine_tuning_of_a_bert_matches_one_process(tiny_bert, small_data, tmp_path):
    """`full` (every weight trained, BERT's token types and pooler in the graph) under two processes: with every
    dropout off (BERT's via model.config_overrides) the two launches differ only by float rounding."""
    config = tmp_path / "no-dropout.yaml"
    config.write_text(
        "model:\n  pooling: cls\n  config_overrides: {hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}\n"
        "train: {epochs: 2, max_length: 64}\n"
    )
    extra = ["--method", "full", "--full-lr", "1e-2", "--config", str(config)]
    single = _train(tmp_path, small_data, str(tiny_bert), "single", 1, 512, extra)
    ddp = _train(tmp_path, small_data, str(tiny_bert), "ddp", 2, 256, extra)
    assert (single["processes"], ddp["processes"], ddp["trainable_percent"]) == (1, 2, 100.0)
    assert ddp["effective_batch"] == single["effective_batch"] and ddp["lr"] == single["lr"]
    losses = [[row["train_loss"] for row in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]
              for run in ("single", "ddp")]  # fmt: skip
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    single_probs = pd.read_csv(tmp_path / "single" / "val_predictions.csv")["prob_1"]
    ddp_probs = pd.read_csv(tmp_path / "ddp" / "val_predictions.csv")["prob_1"]
    assert single_probs.std() > 1e-4  # the texts score differently, so matching them means something
    np.testing.assert_allclose(ddp_probs, single_probs, atol=1e-5)


def test_compare_under_torchrun_writes_one_report_and_records_a_failure(tiny_models, small_data, tmp_path):
    """Every rank runs `compare`; rank 0 alone writes, and a model failing on every rank stays one failed row."""
    out = tmp_path / "cmp"
    missing = str(tmp_path / "no-such-model")
    command = [
        *torchrun(2),
        CLI,
        "-q",
        "compare",
        "--models",
        f"tfidf,{missing},{tiny_models['llama']}",
        "--data",
        str(small_data),
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert done.returncode == 0, failure_text(done)
    results = pd.read_csv(out / "results.csv")
    assert results["status"].tolist() == ["ok", "failed", "ok"]
    assert results["error"].iloc[1] == f"model path does not exist: {missing}"
    manifest = json.loads((out / "compare.json").read_text())
    assert manifest["hardware"]["processes"] == 2
    lora_runs = [p for p in (out / "runs").iterdir() if p.name != "tfidf"]
    summary = json.loads((lora_runs[0] / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["rows"]["validation"] == 48
    assert (out / "report.html").is_file()


LEAVES_GROUP = """
import atexit, os, sys, weakref
import torch.distributed as dist
from lorabench.training.distributed import broadcast, gather_all, world

def record():  # registered before world(): atexit runs handlers last-in first-out, so this one runs after lorabench's
    open(os.path.join(sys.argv[1], os.environ["RANK"]), "w").write(f"{dist.is_initialized()} {group() is None}")

atexit.register(record)
current = world()
group = weakref.ref(dist.distributed_c10d._get_default_group())
import torch._dynamo  # as training does (the optimizer imports it), after the group exists
assert broadcast("from rank 0" if current.is_main else None, current) == "from rank 0"
assert gather_all(current.rank, current) == [0, 1]
"""


def test_each_process_frees_its_group_before_python_shuts_down(tmp_path):
    """A gloo group alive at interpreter shutdown aborts a finished process now and then (SIGABRT, twice in CI):
    by the time Python's exit handlers are done, every process must have destroyed its group and the group object
    must be gone (its worker threads stopped), even after torch._dynamo was imported."""
    script = tmp_path / "leaves_group.py"
    script.write_text(LEAVES_GROUP)
    done = subprocess.run(
        [*torchrun(2), str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert done.returncode == 0, failure_text(done)
    assert [(tmp_path / rank).read_text() for rank in ("0", "1")] == ["False True", "False True"]
