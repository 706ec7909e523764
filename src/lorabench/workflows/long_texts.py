"""How much of the data each model's window cuts: texts counted in the model's own tokens against its
train.max_length, for `lorabench data` (every preset whose tokenizer is on this machine, or the given --model)."""

from __future__ import annotations

import numpy as np

from lorabench.core.config import preset_names, resolve_config
from lorabench.core.errors import LorabenchError, first_line
from lorabench.data.tokenization import load_tokenizer
from lorabench.models.registry import classifier_type
from lorabench.models.weights import resolve_source


def window_fit(model: str, texts: list[str], fetch: bool = True) -> dict:
    """`model`'s window and how many texts exceed it; `window` None for a kind that reads no tokens (tfidf).
    Without `fetch`, a hub model is not downloaded just to count: its row says so."""
    row = {"model": model, "window": None, "texts": len(texts), "longer": None, "share": None, "longest": None,
           "error": ""}  # fmt: skip
    try:
        config = resolve_config(model)
        if not classifier_type(config.model.kind).adapts_a_base_model:
            return {**row, "error": f"no window: {config.model.kind} reads words, not tokens"}
        row["window"] = config.train.max_length
        resolved = resolve_source(config.model)
        if not (resolved.is_local or fetch):
            return {**row, "error": "a hub model: give --model to download its tokenizer and count"}
        tokenizer = load_tokenizer(resolved.source, resolved.gguf_file, config.model.trust_remote_code)
        lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]], dtype=np.int64)
    except (LorabenchError, OSError, ValueError) as err:
        return {**row, "error": first_line(err)}
    longer = int((lengths > row["window"]).sum())
    return {**row, "longer": longer, "share": round(longer / max(len(texts), 1), 4), "longest": int(lengths.max())}


def window_fits(texts: list[str], models: list[str] | None = None) -> list[dict]:
    """One row per given model, or per preset (hub presets only when their tokenizer is given explicitly)."""
    if models:
        return [window_fit(model, texts) for model in models]
    return [window_fit(name, texts, fetch=False) for name in preset_names()]
