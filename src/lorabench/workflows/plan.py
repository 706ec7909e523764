"""Memory planning: what training a model with LoRA needs under each precision / quantization / batch choice,
and whether it fits on this machine. Parameter counts are exact (the model is built on the meta device, LoRA
included); activations follow Korthikanti et al. 2022 and are an estimate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from lorabench.core.config import PRESET_DIR, RunConfig
from lorabench.core.console import quiet_libraries
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.runtime import choose_device, free_memory_bytes, peak_resident_mb
from lorabench.models.lora import add_lora, parameter_counts
from lorabench.models.memory import FP32_MEASURED_FACTOR, activation_bytes
from lorabench.models.weights import resolve_source

ARCHITECTURE_DIR = PRESET_DIR / "architectures"
ADAM_BYTES_PER_TRAINABLE = 4 + 4 + 8  # fp32 weight, gradient, two Adam moments
CUDA_CONTEXT_BYTES = 1 << 30  # CUDA context, cuBLAS workspaces and allocator slack, measured ~0.6-1 GiB
QUANTIZED_BYTES = {"4bit": 0.5 + 0.5 / 64 * 2, "8bit": 1.0}  # NF4 with one bf16 scale per 64 weights; LLM.int8


@dataclass
class Estimate:
    precision: str
    quantize: str
    gradient_checkpointing: bool
    weights_mb: float
    trainable_states_mb: float
    activations_mb: float
    evaluation_mb: float
    overhead_mb: float
    total_mb: float
    fits: bool


def model_config_for(config: RunConfig):
    """The architecture's config without downloading weights: local files, a shipped copy, or the hub."""
    from transformers import AutoConfig  # deferred: seconds to import, and only `plan` needs it here

    shipped = ARCHITECTURE_DIR / f"{config.model.name}.json"
    if shipped.is_file():  # the study's hub models, so `plan` works offline
        values = json.loads(shipped.read_text(encoding="utf-8"))
        return AutoConfig.for_model(values.pop("model_type"), **values)
    resolved = resolve_source(config.model)
    kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    try:
        return AutoConfig.from_pretrained(resolved.source, trust_remote_code=config.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise LorabenchError(f"cannot read the configuration of {config.model.name}: {first_line(err)}") from err


def parameter_counts_on_meta(config: RunConfig, model_config, num_labels: int) -> dict:
    """Exact total / trainable / linear-layer parameter counts, with no memory spent on weights."""
    from transformers import AutoModelForSequenceClassification  # deferred: seconds to import

    model_config.num_labels = num_labels
    if model_config.pad_token_id is None:
        model_config.pad_token_id = model_config.eos_token_id
    with torch.device("meta"):
        model = add_lora(AutoModelForSequenceClassification.from_config(model_config), config.lora)
    counts = parameter_counts(model)
    counts["linear_params"] = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name and "classifier" not in name and "score" not in name
    )
    # LoRA dropout keeps a dropped copy of every adapted layer's input for backward (plus its mask)
    counts["lora_dropout_features"] = (
        sum(m.in_features for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "in_features"))
        if config.lora.dropout > 0
        else 0
    )
    counts["hidden_size"] = model_config.hidden_size
    counts["layers"] = model_config.num_hidden_layers
    counts["heads"] = model_config.num_attention_heads
    return counts


def runtime_overhead_bytes(device: torch.device) -> float:
    """What the process holds before the model: on CPU this process's own resident set (the same libraries a
    training run imports), on CUDA the context and workspaces."""
    if device.type == "cuda":
        return float(CUDA_CONTEXT_BYTES)
    # this process's own peak (not ru_maxrss, which a process inherits from the one that started it)
    return peak_resident_mb() * 2**20


def evaluation_bytes(hidden: int, heads: int, eval_tokens: int, longest: int, sixteen_bit: bool) -> float:
    """Validation runs every epoch in batches of `eval_batch_size` rows (far more tokens than a training batch)
    under `inference_mode`, which frees each layer's activations once the next layer has them: one layer's
    worth at a time. On CPU the allocator keeps that high-water mark on top of training's (measured with
    minilm: +148 MB at the first validation, +297 MB after three; this formula gives 297 MB at 64 x 64 tokens)."""
    return activation_bytes(hidden, heads, 1, eval_tokens, longest, sixteen_bit, checkpointing=False)


def estimate(
    counts: dict,
    precision: str,
    quantize: str,
    checkpointing: bool,
    tokens_per_batch: int,
    longest: int,
    device: torch.device,
    free_bytes: float,
    eval_tokens: int,
) -> Estimate:
    frozen = counts["total_params"] - counts["trainable_params"]
    # Training casts frozen weights to bf16 only on CUDA; fp16 is autocast over fp32 weights.
    weight_bytes = 2 if precision == "bf16" and device.type == "cuda" else 4
    if quantize != "none":
        quantized = min(counts["linear_params"], frozen)
        weights = quantized * QUANTIZED_BYTES[quantize] + (frozen - quantized) * 2
    else:
        weights = frozen * weight_bytes
    states = counts["trainable_params"] * ADAM_BYTES_PER_TRAINABLE
    sixteen_bit = precision in ("bf16", "fp16") or quantize != "none"
    activations = activation_bytes(
        counts["hidden_size"], counts["heads"], counts["layers"], tokens_per_batch, longest, sixteen_bit, checkpointing
    )
    # The dropped inputs of LoRA layers (one layer's worth at a time under checkpointing) and their bool masks;
    # counted exactly with saved-tensor hooks on minilm (r 16 on all linear layers: +21 kB per token and layer
    # over r 8 on query/value, this count 17), and scaled like the rest for what eager fp32 keeps beyond that.
    dropout_features = counts["lora_dropout_features"] / (counts["layers"] if checkpointing else 1)
    activations += dropout_features * tokens_per_batch * (3 if sixteen_bit else 5 * FP32_MEASURED_FACTOR)
    evaluation = evaluation_bytes(counts["hidden_size"], counts["heads"], eval_tokens, longest, sixteen_bit)
    overhead = runtime_overhead_bytes(device)
    total = weights + states + activations + evaluation + overhead
    mb = 2**20
    return Estimate(
        precision,
        quantize,
        checkpointing,
        round(weights / mb),
        round(states / mb),
        round(activations / mb),
        round(evaluation / mb),
        round(overhead / mb),
        round(total / mb),
        total < free_bytes,
    )


def plan(config: RunConfig, num_labels: int = 2, longest: int = 64) -> dict:
    """Estimates for every precision / quantization / checkpointing choice at the configured batch size.

    `longest` is the longest tokenized text expected in a batch (tweets: ~64 tokens; at most max_length).
    """
    quiet_libraries()
    device = choose_device()
    counts = parameter_counts_on_meta(config, model_config_for(config), num_labels)
    settings = config.train
    longest = min(longest, settings.max_length)
    tokens = max(settings.batch_tokens, longest) if settings.batch_tokens else settings.batch_size * longest
    free = free_memory_bytes(device)
    choices = [("fp32", "none"), ("bf16", "none"), ("bf16", "8bit"), ("bf16", "4bit")]
    eval_tokens = settings.eval_batch_size * longest
    rows = [
        asdict(estimate(counts, precision, quantize, checkpointing, tokens, longest, device, free, eval_tokens))
        for precision, quantize in choices
        for checkpointing in (False, True)
        if device.type == "cuda" or quantize == "none"
    ]
    return {
        "model": config.model.name,
        "device": device.type,
        "free_mb": round(free / 2**20),
        "tokens_per_batch": tokens,
        "longest": longest,
        **{k: counts[k] for k in ("total_params", "trainable_params", "trainable_percent")},
        "estimates": rows,
    }
