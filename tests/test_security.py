"""Nothing runs that the user did not ask for: a model's own Python code needs --trust-remote-code, and pickle
weights (which execute code when unpickled) need --allow-pickle. Each test plants code that would leave a
marker file if it ran, and checks that it is absent."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorabench.api import resolve_config
from test_bad_input import assert_refused

EVIL_MODULE = """
from pathlib import Path

Path({marker!r}).write_text("remote code ran")

from transformers import RobertaConfig


class EvilConfig(RobertaConfig):
    pass
"""


@pytest.fixture
def remote_code_model(tmp_path, tiny_models) -> tuple[Path, Path]:
    """A working tiny model whose config.json asks for its own module, which writes a marker on import."""
    model = tmp_path / "remote-code-model"
    shutil.copytree(tiny_models["roberta"], model)
    marker = tmp_path / "marker"
    (model / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)), encoding="utf-8")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilConfig"}
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return model, marker


def test_remote_code_is_refused_without_the_flag(cli, remote_code_model, small_data, tmp_path):
    model, marker = remote_code_model
    result = cli("train", "--model", model, "--data", small_data, "--out", tmp_path / "out", "--epochs", 1)
    assert_refused(result, "auto_map", "--trust-remote-code")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_remote_code_runs_only_with_the_flag(remote_code_model, small_data, tmp_path):
    """The control: the same directory with --trust-remote-code does import the module (so the marker works)."""
    model, marker = remote_code_model
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lorabench.cli",
            "-q",
            "train",
            "--model",
            str(model),
            "--data",
            str(small_data),
            "--out",
            str(tmp_path / "out"),
            "--epochs",
            "1",
            "--trust-remote-code",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert marker.read_text() == "remote code ran"


class _Payload:
    """Unpickling this creates a file: what a malicious pytorch_model.bin could do with any command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def pickle_model(tmp_path, tiny_models) -> tuple[Path, Path]:
    model = tmp_path / "pickle-model"
    shutil.copytree(tiny_models["roberta"], model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    return model, marker


def test_pickle_weights_are_refused_without_the_flag(cli, pickle_model, small_data, tmp_path):
    model, marker = pickle_model
    result = cli("train", "--model", model, "--data", small_data, "--out", tmp_path / "out", "--epochs", 1)
    assert_refused(result, "pickle", "--allow-pickle")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_allowed_pickle_weights_still_load_without_running_code(cli, pickle_model, small_data, tmp_path):
    """--allow-pickle loads through torch's weights-only unpickler, which refuses the payload instead of running it."""
    model, marker = pickle_model
    result = cli(
        "train", "--model", model, "--data", small_data, "--out", tmp_path / "out", "--epochs", 1, "--allow-pickle"
    )
    assert_refused(result, "objects other than tensors")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_allowed_pickle_weights_of_plain_tensors_load(tiny_models, small_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from lorabench.training.preparation import prepare

    model = tmp_path / "bin-model"
    shutil.copytree(tiny_models["roberta"], model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    config = resolve_config(
        str(model),
        overrides={"data": {"source": str(small_data)}, "model": {"allow_pickle": True}, "train": {"max_length": 128}},
    )
    prepared = prepare(config)
    original = load_file(tiny_models["roberta"] / "model.safetensors")
    (expected,) = [tensor for name, tensor in original.items() if name.endswith("word_embeddings.weight")]
    (loaded,) = [p for name, p in prepared.model.named_parameters() if name.endswith("word_embeddings.weight")]
    assert torch.equal(loaded.detach(), expected)  # the pretrained weights, not a random initialisation


def test_hub_models_load_without_remote_code_and_from_safetensors(monkeypatch, tiny_models, small_data):
    """A hub id is never checked on disk first, so the loaders themselves must be told: no code, no pickle."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorabench.training.preparation import prepare

    calls = []
    real_tokenizer, real_model = AutoTokenizer.from_pretrained, AutoModelForSequenceClassification.from_pretrained

    def record(real):
        def load(source, *args, **kwargs):
            calls.append((source, kwargs))
            return real(tiny_models["roberta"], *args, **kwargs)  # stand in for the download

        return load

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", record(real_tokenizer))
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", record(real_model))
    # pooling auto asks the hub for a sentence-transformers modules.json: none here (unpatched, the request waits
    # for the network's timeout, 20 s)
    monkeypatch.setattr("transformers.utils.cached_file", lambda *args, **kwargs: None)
    # the tiny model reads 128 tokens a text; a few of the real tweets run longer in its 300-token vocabulary
    overrides = {"data": {"source": str(small_data)}, "train": {"max_length": 128}}
    prepare(resolve_config("some-org/some-model", overrides=overrides))
    assert {source for source, _ in calls} == {"some-org/some-model"}
    assert len(calls) >= 2 and all(kwargs["trust_remote_code"] is False for _, kwargs in calls)
    model_kwargs = calls[-1][1]
    assert model_kwargs["use_safetensors"] is True
