"""The study's hub models without the hub: their architectures as lorabench ships them, random weights, random
token ids with the real tweets' lengths, and the little a tokenizer must do for `fit`."""

from __future__ import annotations

import json

import numpy as np
import torch

from lorabench.data.tokenization import Encoded
from lorabench.workflows.plan import ARCHITECTURE_DIR

# Priority order (the main target first), and the table of bench/tweet_lengths.json with each model's token
# lengths (Llama-2 takes Mistral's: the file has no table of its own).
LENGTH_TABLES = {"mistral-7b": "mistral", "roberta-large": "roberta", "llama-2-7b": "mistral"}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def architecture(name: str, tiny: bool = False) -> dict:
    """config.json values from src/lorabench/presets/architectures, the pad id defaulting to eos as `lorabench plan`
    does; `tiny` shrinks the model to 2 narrow layers for a smoke run."""
    values = json.loads((ARCHITECTURE_DIR / f"{name}.json").read_text(encoding="utf-8"))
    values.setdefault("pad_token_id", values["eos_token_id"])
    if tiny:
        values.update(TINY)
        if "num_key_value_heads" in values:
            values["num_key_value_heads"] = 2
    return values


def is_encoder(name: str) -> bool:
    """An encoder's packed row would need a dense (sum of lengths)^2 mask, and it has no 4-bit stage here."""
    return architecture(name)["model_type"] == "roberta"


def build(name: str, dtype: torch.dtype, device: torch.device, tiny: bool = False):
    """The real architecture with random weights (seed 0, so every stage starts from the same ones)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    values = architecture(name, tiny)
    config = AutoConfig.for_model(values.pop("model_type"), **values, num_labels=2)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype)


def random_rows(lengths: list[int], vocab_size: int, bos: int, seed: int) -> Encoded:
    """Random ids of the given lengths after a <s>, labels 43% positive as in the tweets."""
    rng = np.random.default_rng(seed)
    ids = [[bos] + rng.integers(3, vocab_size, size=n - 1).tolist() for n in lengths]
    return Encoded(input_ids=ids, labels=(rng.random(len(lengths)) < 0.43).astype(np.int64), truncated=0)


def first_rows(rows: Encoded, count: int | None) -> Encoded:
    """The first `count` rows (all with None): the slow stages run on a prefix of the epoch."""
    return Encoded(rows.input_ids[:count], rows.labels[:count], 0)


class StubTokenizer:
    """What `fit` asks of a tokenizer when the token ids are already made: pad id, side, and saving (nothing)."""

    padding_side = "right"

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def save_pretrained(self, directory) -> None:
        pass
