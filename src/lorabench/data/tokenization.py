"""Stage 2: texts -> token ids once per run, and token ids -> a padded batch each step.

Padding is done here rather than with `DataCollatorWithPadding` because batches are drawn from pre-tokenized
id lists by our own sampler; padding a list of lists is a few lines and avoids a dict-of-lists round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lorabench.core.console import progress_bar
from lorabench.core.errors import LorabenchError

TOKENIZE_CHUNK = 1000


@dataclass
class Encoded:
    """Token ids of one split, unpadded, with the class ids (or -1) alongside."""

    input_ids: list[list[int]]
    labels: np.ndarray
    truncated: int
    longest: int = 0  # tokens of the longest text before truncation

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, rows: np.ndarray) -> Encoded:
        return Encoded([self.input_ids[i] for i in rows], self.labels[rows], truncated=0)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def load_tokenizer(source: str, gguf_file: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer the way the study did (`add_prefix_space=True`), giving decoders a pad token (= eos)."""
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, add_prefix_space=True, **kwargs)
    except (TypeError, ValueError):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)  # tokenizers that refuse the option
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LorabenchError(f"the tokenizer of {source} has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode(tokenizer, texts: list[str], labels: np.ndarray, max_length: int, description: str) -> Encoded:
    """Tokenize once, truncating at `max_length` and counting how many texts were cut."""
    input_ids: list[list[int]] = []
    truncated = longest = 0
    with progress_bar(f"tokenize {description}", len(texts)) as bar:
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = texts[start : start + TOKENIZE_CHUNK]
            full = tokenizer(chunk, truncation=False, padding=False)["input_ids"]
            for ids in full:
                longest = max(longest, len(ids))
                if len(ids) > max_length:
                    truncated += 1
                    ids = _truncate(ids, max_length, tokenizer)
                input_ids.append(ids)
            bar.advance(len(chunk))
    return Encoded(input_ids, np.asarray(labels, dtype=np.int64), truncated, longest)


def truncation_note(truncated: int, texts: int, longest: int, max_length: int, limit: int | None = None) -> str | None:
    """One line on the texts the window cuts; when it cuts most of them, also the settings that would keep them
    (a window no wider than `limit`, the most tokens the model reads, when its tokenizer says)."""
    if not truncated:
        return None
    cut = f"{truncated:,} of {texts:,} texts are longer than train.max_length {max_length} tokens (longest {longest:,})"
    if truncated * 2 <= texts:
        return f"{cut}: they are truncated"
    wider = longest if limit is None else min(longest, limit)
    widest = "" if wider == longest else ", the most this model reads"
    return (
        f"most texts will be cut: {cut}; raise the window (train --set train.max_length={wider}{widest}, or "
        "train.max_length in compare's --config; `lorabench plan` prices the memory) or score them whole in "
        "overlapping windows (data.long_texts windows)"
    )


def encode_windows(tokenizer, texts: list[str], max_length: int) -> tuple[Encoded, np.ndarray]:
    """Each text as windows of at most `max_length` tokens, each overlapping the previous by half its text
    tokens, with the special tokens in every window (the tokenizer's own overflow); and the text each belongs to."""
    if not getattr(tokenizer, "is_fast", False):
        raise LorabenchError("data.long_texts windows needs a fast (Rust) tokenizer; this model's is a Python one")
    room = max_length - tokenizer.num_special_tokens_to_add()
    if room < 2:
        raise LorabenchError(f"data.long_texts windows needs train.max_length above {max_length}: no room for text")
    batch = tokenizer(texts, truncation=True, max_length=max_length, stride=room // 2, return_overflowing_tokens=True)
    owners = np.asarray(batch["overflow_to_sample_mapping"], dtype=np.int64)
    return Encoded(batch["input_ids"], np.full(len(owners), -1), truncated=0), owners


def mean_by_owner(probabilities: np.ndarray, owners: np.ndarray, rows: int) -> np.ndarray:
    """The mean of each text's window probabilities (rows in text order)."""
    sums = np.zeros((rows, probabilities.shape[1]), dtype=np.float64)
    np.add.at(sums, owners, probabilities)
    return (sums / np.bincount(owners, minlength=rows)[:, None]).astype(probabilities.dtype)


def _truncate(ids: list[int], max_length: int, tokenizer) -> list[int]:
    """Cut to max_length but keep a closing special token (e.g. [SEP], </s>) the model expects last."""
    last = ids[-1]
    if last in tokenizer.all_special_ids and max_length > 1:
        return ids[: max_length - 1] + [last]
    return ids[:max_length]


def pad_batch(sequences: list[list[int]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding) and build the attention mask."""
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if padding_side == "left":
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            attention_mask[row, width - len(seq) :] = 1
        else:
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
