"""A GGUF model is de-quantized once into the cache and loaded from there: the same tokens and the same logits as
reading the GGUF file, in a fraction of the time (lorabench.models.dequantized)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from conftest import smollm2_gguf

pytestmark = pytest.mark.slow  # reads SmolLM2-135M's GGUF file twice (about 17 s each on 2 cores)

TEXTS = ["Forest fire near La Ronge Sask. Canada", "", "café 🔥 http://t.co/lHYXEOHY6C &amp; #flood", "a " * 40]


@pytest.fixture(scope="module")
def resolved():
    from lorabench.core.config import ModelConfig, preset_dict
    from lorabench.models.weights import resolve_source

    smollm2_gguf()  # skips without the package
    return resolve_source(ModelConfig(**preset_dict("smollm2")["model"], name="smollm2"))


def test_the_gguf_file_becomes_a_plain_folder_in_the_cache(resolved):
    from lorabench.core.config import ModelConfig, preset_dict
    from lorabench.models.split_zip import cache_root
    from lorabench.models.weights import resolve_source

    folder = Path(resolved.source)
    assert resolved.gguf_file is None and folder.parent == cache_root() / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {path.name for path in folder.iterdir()}
    written = (folder / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    again = resolve_source(ModelConfig(**preset_dict("smollm2")["model"], name="another-name"))
    assert time.perf_counter() - started < 2
    assert again.source == resolved.source and (folder / "model.safetensors").stat().st_mtime_ns == written


def test_the_copy_tokenizes_and_predicts_as_the_gguf_file(resolved):
    from transformers import AutoModelForCausalLM

    from lorabench.data.tokenization import load_tokenizer

    gguf = smollm2_gguf()
    from_copy, from_gguf = load_tokenizer(resolved.source), load_tokenizer(str(gguf.parent), gguf.name)
    assert from_copy(TEXTS)["input_ids"] == from_gguf(TEXTS)["input_ids"]
    assert (from_copy.pad_token_id, from_copy.eos_token_id) == (from_gguf.pad_token_id, from_gguf.eos_token_id)
    batch = from_copy(TEXTS, return_tensors="pt", padding=True)
    copy = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(copy(**batch).logits, original(**batch).logits)


def test_a_file_too_large_to_copy_is_read_directly(monkeypatch, tmp_path):
    from lorabench.core.config import ModelConfig, preset_dict
    from lorabench.models import dequantized
    from lorabench.models.weights import resolve_source

    monkeypatch.setattr(dequantized, "MAX_GGUF_BYTES", 1000)
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path))
    gguf = smollm2_gguf()
    direct = resolve_source(ModelConfig(**preset_dict("smollm2")["model"], name="smollm2"))
    assert (direct.source, direct.gguf_file) == (str(gguf.parent), gguf.name)
    assert not (tmp_path / "models").exists()
