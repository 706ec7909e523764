"""Before a LoRA-like run's first step: data, tokenizer and model loaded and checked, every split tokenized once.

Everything that can refuse bad input does so here, before the run directory is touched (lora_recipe writes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorabench.core.config import RunConfig
from lorabench.core.console import quiet_libraries, say
from lorabench.core.errors import LorabenchError
from lorabench.data.sources import TextSplits, load_splits
from lorabench.data.tokenization import Encoded, encode, load_tokenizer, truncation_note
from lorabench.models.lora import FULL_KIND, add_lora
from lorabench.models.packing import can_pack, check_positions, choose_attention, resolve_pooling
from lorabench.models.weights import load_base_model, resolve_source, sentence_transformers_pooling


@dataclass
class Prepared:
    """Everything a training run needs before its first step, built and checked before any file is written."""

    config: RunConfig
    splits: TextSplits
    tokenizer: object
    model: object
    train: Encoded
    validation: Encoded
    test: Encoded | None
    pooling: str | None = None  # the resolved model.pooling; None: the head's own token

    def encoded(self, split: str) -> Encoded | None:
        return {"val": self.validation, "test": self.test}[split]

    @property
    def truncated_texts(self) -> int:
        return sum(encoded.truncated for encoded in (self.train, self.validation, self.test) if encoded)


def prepare(config: RunConfig) -> Prepared:
    """Load and check data, tokenizer and model; raises LorabenchError on bad input before touching the disk."""
    quiet_libraries()
    splits = load_splits(config.data)
    resolved = resolve_source(config.model)
    tokenizer = load_tokenizer(resolved.source, resolved.gguf_file, config.model.trust_remote_code)
    torch.manual_seed(config.train.seed)  # the head and LoRA initialisations
    base = load_base_model(resolved, config.model, splits.label_names, tokenizer.pad_token_id)
    if config.kind == FULL_KIND:
        if config.model.quantize != "none":
            raise LorabenchError("model.method full trains every weight, which a quantized base cannot; set "
                                 "model.quantize none or use a LoRA method")  # fmt: skip
        model = base.requires_grad_(True)
    else:
        model = add_lora(base, config.lora, config.method)
    choose_attention(model)
    pooling = resolve_pooling(config.model.pooling, model, sentence_transformers_pooling(resolved))
    if config.train.packing and not can_pack(model):
        raise LorabenchError(f"train.packing does not support {base.config.model_type} models; set it to false")
    encoded = {
        name: encode(tokenizer, frame["text"].tolist(), frame["label"].to_numpy(), config.train.max_length, name)
        for name, frame in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
        if frame is not None
    }
    longest = max(split.longest for split in encoded.values())  # in tokens, before truncation
    check_positions(model, min(longest, config.train.max_length), config.train.max_length)
    prepared = Prepared(
        config, splits, tokenizer, model, encoded["train"], encoded["validation"], encoded.get("test"), pooling
    )
    for note in splits.notes:
        say(f"note: {note}")
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None  # else: unset
    note = truncation_note(prepared.truncated_texts, sum(map(len, encoded.values())), longest,
                           config.train.max_length, limit)  # fmt: skip
    if note:
        say(f"note: {note}")
    return prepared
