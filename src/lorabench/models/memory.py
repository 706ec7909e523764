"""What training a transformer keeps in memory for backward: the estimate behind `plan` and the automatic
gradient-checkpointing choice (Korthikanti et al. 2022, scaled by what eager fp32 measured here)."""

from __future__ import annotations

from lorabench.core.config import TrainSettings

# The formula counts what a fused 16-bit implementation keeps; eager fp32 on CPU keeps 2.25x the formula's
# fp32 figure: minilm measured 0.436 MB per token (6 layers, 64-token rows) for batches of 1024 and 4096 tokens,
# against 0.193 MB from the formula in fp32. Not yet measured for 16-bit on a GPU (left at 1).
FP32_MEASURED_FACTOR = 2.25


def activation_bytes(
    hidden: int, heads: int, layers: int, tokens_per_batch: int, longest: int, sixteen_bit: bool, checkpointing: bool
) -> float:
    """Activations one training batch keeps for backward: ~(34 * hidden + 5 * heads * length) bytes per token
    and layer in 16-bit, twice that in fp32. With checkpointing only each layer's input is kept, plus one
    layer's full activations during its recomputation."""
    scale = 1 if sixteen_bit else 2 * FP32_MEASURED_FACTOR
    per_layer = scale * (34 * hidden + 5 * heads * longest) * tokens_per_batch
    if checkpointing:
        return float(layers * scale * 2 * hidden * tokens_per_batch + per_layer)
    return float(layers * per_layer)


def batch_activation_bytes(model, lengths, settings: TrainSettings, amp_dtype) -> float:
    """The activations of the largest training batch the settings give (`batch_tokens` padded tokens, or
    `batch_size` rows of the longest text), without checkpointing."""
    longest = int(lengths.max())
    tokens = max(settings.batch_tokens, longest) if settings.batch_tokens else settings.batch_size * longest
    text = model.config.get_text_config()
    return activation_bytes(text.hidden_size, text.num_attention_heads, text.num_hidden_layers, tokens, longest,
                            sixteen_bit=amp_dtype is not None, checkpointing=False)  # fmt: skip
