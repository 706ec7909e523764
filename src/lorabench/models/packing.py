"""Stage 2b: how a batch of token ids reaches the model - padded or packed - and with which attention kernel.

Padded: rows padded to the longest in the batch (length-sorted batches keep that padding near zero).
Packed (padding-free): the batch's sequences concatenated into one row, with position ids restarting at every
sequence and attention kept inside each sequence, and the classification head applied to one pooled token
per sequence (decoders: the last token; encoders: the first, [CLS] or <s>). Both give the same logits.

Pooling (`model.pooling`): the head's own token (encoders: [CLS] / <s>, through BERT's pooler; decoders: the
last real token), or the mean of the last hidden states over a row's real tokens, which sentence-transformers
models were trained for. A mean goes through the head minus its own token-picking: BERT's [CLS] pooler is
skipped (dropout -> classifier), RoBERTa-style heads that read `features[:, 0]` get the mean in that place, and
decoders' `score` is applied to it.

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
POOLINGS = ("cls", "mean", "last")
# Encoder heads that read one token's features (`features[:, 0]`), so a mean vector can take its place; BERT's
# pooler + linear head takes one too (head_logits). Every decoder's `score` layer does.
TOKEN_READING_HEADS = ("roberta", "xlm-roberta", "camembert", "mpnet", "electra")
MEAN_POOLED_ENCODERS = ("bert", *TOKEN_READING_HEADS)


def classifier(model):
    """The `*ForSequenceClassification` model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_decoder_classifier(model) -> bool:
    """Decoders' sequence classifiers score every token with `score` and keep the last real one."""
    return hasattr(classifier(model), "score")


def own_pooling(model) -> str:
    """The token the architecture's own head pools: the last for decoders, the first ([CLS] / <s>) otherwise."""
    return "last" if is_decoder_classifier(model) else "cls"


def resolve_pooling(requested: str, model, trained_for: str | None = None) -> str:
    """The pooling a run uses: `auto` is mean when the model was trained for it (`trained_for`, e.g. a
    sentence-transformers folder's pooling) and its head takes a mean, else the head's own token; a choice the
    architecture cannot take is refused (a causal model's first token sees only itself; BERT's [SEP] and
    RoBERTa's </s> were never trained as a summary)."""
    own, model_type = own_pooling(model), classifier(model).config.model_type
    takes_mean = is_decoder_classifier(model) or model_type in MEAN_POOLED_ENCODERS
    if requested == "auto":
        return "mean" if trained_for == "mean" and takes_mean else own
    if requested == "mean" and not takes_mean:
        raise LorabenchError(
            f"model.pooling mean supports decoders and {', '.join(MEAN_POOLED_ENCODERS)} heads, not {model_type}; "
            f"use {own} (its head's own token)"
        )
    if requested not in ("mean", own):
        raise LorabenchError(f"model.pooling {requested} does not fit {model_type}: use {own} or mean")
    return requested


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


def check_positions(model, longest: int, max_length: int) -> None:
    """Refuse rows longer than a learned table of absolute positions (BERT, RoBERTa, MPNet; those numbering from
    padding_idx + 1 lose padding_idx + 1 entries), which would fail deep in the embeddings with an index error.
    Rotary decoders compute their positions: no table to run past."""
    for name, module in classifier(model).named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            limit = module.num_embeddings - (0 if module.padding_idx is None else module.padding_idx + 1)
            if longest > limit:
                raise LorabenchError(
                    f"the model reads at most {limit} tokens (its table of positions), but train.max_length "
                    f"{max_length} keeps texts of up to {longest}: set train.max_length to {limit} or less "
                    f"(train --max-length {limit})"
                )
            return


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
    segment = torch.from_numpy(np.repeat(np.arange(len(sequences)), lengths))
    packed["segment"] = segment  # which sequence each token belongs to (mean pooling)
    if config.model_type in PACKED_DECODERS:
        # the rightmost token that is not padding, as GenericForSequenceClassification picks it
        packed["pooled"] = torch.tensor(
            [start + _last_real(seq, pad_id) for start, seq in zip(starts, sequences, strict=True)]
        )
    else:
        packed["pooled"] = torch.from_numpy(starts)
        packed["attention_mask"] = (segment[:, None] == segment[None, :])[None, None]
    return packed


def _last_real(sequence: list[int], pad_id: int) -> int:
    return next((i for i in range(len(sequence) - 1, -1, -1) if sequence[i] != pad_id), 0)


def packed_logits(model, packed: dict[str, torch.Tensor], pooling: str | None = None) -> torch.Tensor:
    """Run the backbone on the packed row and the classification head on each sequence's pooled token (or, for
    mean pooling, the mean of each sequence's tokens)."""
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
    if pooling == "mean":
        segment = packed["segment"]
        sums = hidden.new_zeros(len(packed["pooled"]), hidden.shape[-1]).index_add_(0, segment, hidden)
        lengths = torch.bincount(segment, minlength=len(sums)).to(hidden.dtype)
        return head_logits(head_model, sums / lengths[:, None], pooling)
    return head_logits(head_model, hidden[packed["pooled"]], pooling)


def head_logits(head_model, pooled: torch.Tensor, pooling: str | None) -> torch.Tensor:
    """The classification head on one pooled vector per row (rows, hidden)."""
    if is_decoder_classifier(head_model):
        return head_model.score(pooled)
    if head_model.config.model_type == "bert":
        # BertForSequenceClassification: pooler (dense + tanh, trained on [CLS] alone) -> dropout -> linear
        features = pooled if pooling == "mean" else head_model.base_model.pooler(pooled[:, None])
        return head_model.classifier(head_model.dropout(features))
    # RobertaClassificationHead and MPNetClassificationHead read features[:, 0]. MPNet's relative position bias
    # spans the packed row, but it depends only on the distance between two tokens, which is the same inside a
    # sequence as in its own row; the mask hides the pairs across sequences.
    return head_model.classifier(pooled[:, None])


def padded_logits(model, inputs: dict[str, torch.Tensor], pooling: str | None = None) -> torch.Tensor:
    """Logits of a padded batch: the model's own head, or the head on each row's mean over its real tokens (the
    attention mask's ones; no mask: every token is real). The ONNX export traces this very function."""
    if pooling != "mean":
        return model(**inputs).logits
    head_model = classifier(model)
    options = {"use_cache": False} if is_decoder_classifier(model) else {}
    hidden = head_model.base_model(**inputs, **options).last_hidden_state
    mask = inputs.get("attention_mask")
    if mask is None:
        return head_logits(head_model, hidden.mean(dim=1), pooling)
    weights = mask[..., None].to(hidden.dtype)
    return head_logits(head_model, (hidden * weights).sum(dim=1) / weights.sum(dim=1), pooling)


def batch_logits(
    model,
    sequences: list[list[int]],
    pad_id: int,
    padding_side: str,
    device: torch.device,
    packed: bool = False,
    pooling: str | None = None,
) -> torch.Tensor:
    """Logits (rows, classes) of `sequences`, in their order, through the padded or the packed path; `pooling`
    mean pools each row's mean, cls / last / None the head's own token (resolve_pooling checked it fits)."""
    if packed:
        inputs = {key: value.to(device) for key, value in pack(sequences, model, pad_id).items()}
        return packed_logits(model, inputs, pooling)
    inputs = {key: value.to(device) for key, value in padded_inputs(sequences, pad_id, padding_side).items()}
    return padded_logits(model, inputs, pooling)
