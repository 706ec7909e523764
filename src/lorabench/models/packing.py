"""Stage 2b: how a batch of token ids reaches the model - padded or packed - and with which attention kernel.

Padded: rows padded to the longest in the batch (length-sorted batches keep that padding near zero).
Packed (padding-free): the batch's sequences concatenated into one row, with position ids restarting at every
sequence and attention kept inside each sequence, and the classification head applied to one pooled token
per sequence (decoders: the last token; encoders: the first, [CLS] or <s>). Both give the same logits.

transformers supports packing natively for decoders only (`position_ids` that restart mark the sequences and
`create_causal_mask` builds the block-diagonal mask; `DataCollatorWithFlattening` does the same for language
modelling), and its `*ForSequenceClassification` heads pool one token per row. So the pooling is done here,
per architecture, and encoders get the block-diagonal mask passed in as a ready 4-D mask.

Packing needs a varlen attention kernel (flash-attention) to pay: with the dense masks of eager / SDPA
attention the packed row's attention costs (sum of lengths)^2 instead of sum(length^2), while token-budget
batches of sorted rows already carry almost no padding (bench/README.md has the measurements), so the
padded path stays the default and packing is opt-in (`train.packing`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from lorabench.core.errors import LorabenchError
from lorabench.data.tokenization import pad_batch

# Encoders pool the first token through their own head; decoders score their last token.
PACKED_ENCODERS = ("bert", "roberta", "mpnet")
# Encoders whose embeddings number positions from padding_idx + 1 (their create_position_ids_from_input_ids).
POSITIONS_AFTER_PADDING = ("roberta", "mpnet")
PACKED_DECODERS = ("llama", "mistral")


def classifier(model):
    """The `*ForSequenceClassification` model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_decoder_classifier(model) -> bool:
    """Decoders' sequence classifiers score every token with `score` and keep the last real one."""
    return hasattr(classifier(model), "score")


def choose_attention(model) -> str:
    """Eager attention for encoders, SDPA for decoders, set on the loaded model.

    Measured on CPU (minilm, 2 cores: eager 340 tokens/s vs SDPA 81 with a padding mask, equal without) and on
    an H200 (RoBERTa-large epoch: eager 6.6 s vs SDPA 21 s): SDPA with a padding mask takes a slow kernel on
    these encoders. Decoders keep SDPA, whose causal kernel is fast and which transformers makes mask-free
    when a batch has no padding.
    """
    wanted = "sdpa" if is_decoder_classifier(model) else "eager"
    # an architecture without that implementation keeps the one it loaded with
    with contextlib.suppress(ValueError, ImportError):
        classifier(model).set_attn_implementation(wanted)
    return classifier(model).config._attn_implementation


def can_pack(model) -> bool:
    return classifier(model).config.model_type in PACKED_ENCODERS + PACKED_DECODERS


def padded_inputs(sequences: list[list[int]], pad_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    """Padded batch; the attention mask is dropped when no row is padded (sorted batches mostly), which spares
    the eager kernels a mask addition and lets SDPA take its mask-free kernel."""
    batch = pad_batch(sequences, pad_id, padding_side)
    if bool(batch["attention_mask"].all()):
        del batch["attention_mask"]
    return batch


def pack(sequences: list[list[int]], model, pad_id: int) -> dict[str, torch.Tensor]:
    """One packed row of `sequences`: input_ids and position_ids (1, total), the index of each sequence's pooled
    token, and for encoders the block-diagonal 4-D attention mask."""
    config = classifier(model).config
    if config.model_type not in PACKED_ENCODERS + PACKED_DECODERS:
        raise LorabenchError(
            f"packed batches support {', '.join(PACKED_ENCODERS + PACKED_DECODERS)}, "
            f"not {config.model_type}; set train.packing to false"
        )
    lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ids = np.fromiter((token for seq in sequences for token in seq), dtype=np.int64, count=int(lengths.sum()))
    local = np.arange(len(ids)) - np.repeat(starts, lengths)
    packed = {"input_ids": torch.from_numpy(ids)[None]}
    if config.model_type in POSITIONS_AFTER_PADDING:
        local = local + classifier(model).base_model.embeddings.padding_idx + 1
    packed["position_ids"] = torch.from_numpy(local)[None]
    if config.model_type in PACKED_DECODERS:
        # the rightmost token that is not padding, as GenericForSequenceClassification picks it
        packed["pooled"] = torch.tensor(
            [start + _last_real(seq, pad_id) for start, seq in zip(starts, sequences, strict=True)]
        )
    else:
        packed["pooled"] = torch.from_numpy(starts)
        segment = torch.from_numpy(np.repeat(np.arange(len(sequences)), lengths))
        packed["attention_mask"] = (segment[:, None] == segment[None, :])[None, None]
    return packed


def _last_real(sequence: list[int], pad_id: int) -> int:
    return next((i for i in range(len(sequence) - 1, -1, -1) if sequence[i] != pad_id), 0)


def packed_logits(model, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the backbone on the packed row and the classification head on each sequence's pooled token."""
    head_model = classifier(model)
    backbone = head_model.base_model
    model_type = head_model.config.model_type
    mask = packed.get("attention_mask")
    if mask is not None and head_model.config._attn_implementation == "eager":
        # eager attention adds its mask to the scores: 0 inside a sequence, the dtype's minimum across (as
        # transformers' own eager masks, in the weights' dtype)
        dtype = backbone.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    # no cache: transformers only detects packed position_ids (and masks across sequences) without one
    options = {"use_cache": False} if model_type in PACKED_DECODERS else {}
    hidden = backbone(
        input_ids=packed["input_ids"], position_ids=packed["position_ids"], attention_mask=mask, **options
    ).last_hidden_state[0]
    pooled = hidden[packed["pooled"]]
    if model_type in PACKED_DECODERS:
        return head_model.score(pooled)
    if model_type == "bert":  # BertForSequenceClassification: pooler (dense + tanh on [CLS]) -> dropout -> linear
        return head_model.classifier(head_model.dropout(backbone.pooler(pooled[:, None])))
    # RobertaClassificationHead and MPNetClassificationHead read features[:, 0]. MPNet's relative position bias
    # spans the packed row, but it depends only on the distance between two tokens, which is the same inside a
    # sequence as in its own row; the mask hides the pairs across sequences.
    return head_model.classifier(pooled[:, None])


def batch_logits(
    model, sequences: list[list[int]], pad_id: int, padding_side: str, device: torch.device, packed: bool = False
) -> torch.Tensor:
    """Logits (rows, classes) of `sequences`, in their order, through the padded or the packed path."""
    if packed:
        inputs = {key: value.to(device) for key, value in pack(sequences, model, pad_id).items()}
        return packed_logits(model, inputs)
    inputs = {key: value.to(device) for key, value in padded_inputs(sequences, pad_id, padding_side).items()}
    return model(**inputs).logits
