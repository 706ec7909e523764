"""`lorabench plan` against the study's exact parameter counts; `--quantize` on and off CUDA."""

from __future__ import annotations

import pytest
import torch

from lorabench.core.config import resolve_config
from lorabench.core.errors import LorabenchError
from lorabench.workflows.plan import plan


def test_parameter_counts_match_the_study_without_downloading():
    # The study's printed counts: Mistral-7B r=2 on q/v 860,160 trainable of 7,111,528,448 (0.0121%).
    mistral = plan(resolve_config("mistral-7b"))
    assert (mistral["trainable_params"], mistral["total_params"]) == (860_160, 7_111_528_448)
    llama = plan(resolve_config("llama-2-7b"))
    assert llama["trainable_params"] == 8_396_800
    fp32, fp32_checkpointed = llama["estimates"][0], llama["estimates"][1]
    assert fp32["weights_mb"] == pytest.approx((6_615_748_608 - 8_396_800) * 4 / 2**20, abs=1)
    assert fp32_checkpointed["activations_mb"] < fp32["activations_mb"] / 5


def test_quantize_needs_cuda(tiny_models, small_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for CPU-only machines")
    from lorabench.training.preparation import prepare

    config = resolve_config(
        str(tiny_models["llama"]), overrides={"data": {"source": str(small_data)}, "model": {"quantize": "4bit"}}
    )
    with pytest.raises(LorabenchError, match="needs a CUDA GPU"):
        prepare(config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit QLoRA needs CUDA and bitsandbytes")
def test_4bit_training_on_cuda(tiny_models, small_data, tmp_path):
    pytest.importorskip("bitsandbytes")
    from lorabench.api import train

    config = resolve_config(
        str(tiny_models["llama"]),
        overrides={
            "data": {"source": str(small_data)},
            "model": {"quantize": "4bit"},
            "train": {"epochs": 1, "max_length": 48, "batch_tokens": 1024},
        },
    )
    summary = train(config, tmp_path / "run")
    assert summary.precision == "bfloat16"
    assert 0 <= summary.val.f1 <= 1


def test_plan_is_within_a_quarter_of_the_measured_peak_for_minilm_on_cpu(tweets_dir, tmp_path):
    """The estimate against a real run's peak RSS, both in fresh processes (plan counts its own process as the
    runtime, so it must not run inside pytest's, which holds every earlier test's memory)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    if torch.cuda.is_available():
        pytest.skip("the CPU check: on CUDA the run reports GPU memory")
    cli = str(Path(sys.executable).parent / "lorabench")
    data = tmp_path / "tweets.csv"
    # 120 training rows, about 4,000 tokens: 64-token batches stay under the 50-steps-an-epoch floor, so the run
    # trains the batches the plan is asked about (the peak is a batch's, not the rows')
    pd.read_csv(tweets_dir / "train.csv").head(150).to_csv(data, index=False)
    subprocess.run(
        [
            cli,
            "-q",
            "train",
            "--model",
            "minilm",
            "--data",
            str(data),
            "--epochs",
            "1",
            "--batch-tokens",
            "64",
            "--precision",
            "fp32",
            "--out",
            str(tmp_path / "run"),
        ],
        check=True,
        timeout=600,
    )
    measured = json.loads((tmp_path / "run" / "summary.json").read_text())["peak_memory_mb"]
    planned = subprocess.run(
        [cli, "plan", "--model", "minilm", "--batch-tokens", "64", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    fp32 = json.loads(planned.stdout)["estimates"][0]
    assert (fp32["precision"], fp32["gradient_checkpointing"]) == ("fp32", False)
    assert fp32["total_mb"] == pytest.approx(measured, rel=0.25), (fp32, measured)
