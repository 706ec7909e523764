"""What a speed figure is measured against: model FLOPs, the machine's peak, and the device's clock points."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

H200_BF16_NOMINAL = 989e12


def linear_weights(model) -> int:
    """Weights of the base model's linear layers (LoRA's excluded): the N of 2N FLOPs per token."""
    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    )


def model_flops(model, lengths: np.ndarray, training: bool) -> float:
    """Model FLOPs of rows of these lengths, as speed.py's docstring counts them (no padding, no recomputation)."""
    config = model.config
    linear, attention = linear_weights(model), config.hidden_size * config.num_hidden_layers
    tokens, squares = float(lengths.sum()), float((lengths.astype(np.float64) ** 2).sum())
    if training:
        return 4 * linear * tokens + 12 * attention * squares
    return 2 * linear * tokens + 4 * attention * squares


def matmul_peak(device: torch.device) -> float:
    """FLOP/s of a large dense matrix product here: fp32 on CPU, bf16 on CUDA."""
    size, dtype = (1024, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    repeats = 3 if device.type == "cpu" else 20
    for _ in range(2):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def cpu_nominal_flops() -> float:
    """fp32 peak of the threads torch uses: clock (/proc/cpuinfo) x 32 FLOP per cycle (AVX2: two 8-wide FMA units)."""
    mhz = next(
        float(line.split(":")[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("cpu MHz")
    )
    return torch.get_num_threads() * mhz * 1e6 * 32


def gpu_mfu(flops: float, seconds: float, peak: float) -> dict:
    """MFU against the matrix product measured here and against the H200's nominal bf16 rate."""
    return {
        "mfu_vs_measured_matmul": round(flops / seconds / peak, 4),
        "mfu_vs_nominal_989": round(flops / seconds / H200_BF16_NOMINAL, 4),
    }


def sync(device: torch.device) -> None:
    """CUDA runs asynchronously: a clock read without this would time the kernel launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Starts a stage's GPU peak afresh, so `runtime.peak_memory_mb` reports that stage alone."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def empty_cache(device: torch.device) -> None:
    """Hands the freed blocks of a finished stage back, so the next model's peak is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
