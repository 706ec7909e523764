"""GPU mode's stages for one model, in priority order while the budget lasts: the recipe on a few rows, lorabench's
default for a full epoch, prediction, other batch budgets and packing, the 4-bit path."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.core import storage as record
from lorabench.core.config import ModelConfig, RunConfig, resolve_config
from lorabench.core.runtime import peak_memory_mb
from lorabench.data.sources import TextSplits
from lorabench.data.tokenization import Encoded
from lorabench.models.lora import add_lora
from lorabench.models.lora import score_encoded as predict_proba
from lorabench.models.packing import choose_attention
from lorabench.training.lora_recipe import fit
from lorabench.training.preparation import Prepared
from speedbench.measure import empty_cache, gpu_mfu, model_flops, reset_peak, sync
from speedbench.recipe import RECIPE_BATCH, recipe_callback, recipe_trainer
from speedbench.synthetic import (
    LENGTH_TABLES,
    StubTokenizer,
    architecture,
    build,
    first_rows,
    is_encoder,
    random_rows,
)

GPU_EPOCH_ROWS = 6090  # the training split of bench/tweet_lengths.json: one epoch of the study


@dataclass
class Stages:
    """What every stage of one model shares: its preset, rows, device, and the yardsticks of its figures."""

    name: str
    preset: RunConfig
    train: Encoded
    validation: Encoded
    pad_id: int
    device: torch.device
    flops_per_epoch: float  # model FLOPs of the full 6090-row epoch
    peak: float  # measured matrix-product FLOP/s


def synthetic_model(name: str, args, peak: float, lengths: dict, deadline: float, save: Callable[[dict], None]):
    """Every stage for one model; `save` is handed the partial report after each, so a run cut short reports."""
    device = torch.device(args.device)
    preset = resolve_config(name, overrides={"train": {"epochs": 1, "tracking": "none"}})
    table, values = lengths[LENGTH_TABLES[name]], architecture(name)
    vocab, bos, pad_id = values["vocab_size"], values["bos_token_id"], values["pad_token_id"]
    train = random_rows(table["train"], vocab, bos, 0)
    validation = random_rows(table["validation"], vocab, bos, 1)
    test = random_rows(table["test"], vocab, bos, 2)
    report = {
        "model": name,
        "train_rows": len(train),
        "train_tokens": int(train.lengths.sum()),
        "mean_tokens": round(float(train.lengths.mean()), 1),
    }

    started = time.perf_counter()
    model = add_lora(build(name, torch.float32, device, args.tiny), preset.lora)
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    flops_per_epoch = model_flops(model.get_base_model(), train.lengths, training=True)
    stages = Stages(name, preset, train, validation, pad_id, device, flops_per_epoch, peak)
    report["recipe"] = recipe_stage(stages, model, args.recipe_rows)
    base = model.unload()  # the same random weights, LoRA removed; lorabench casts the frozen ones to bf16 itself
    base.gradient_checkpointing_disable()
    empty_cache(device)
    save(report)

    # (b) lorabench's defaults: a full epoch, then prediction; then other budgets and packing while time lasts
    variants = [("lorabench", {})] + [(f"lorabench_tokens_{n}", {"batch_tokens": n}) for n in args.more_budgets]
    if args.packed and not is_encoder(name):
        variants.append(("lorabench_packed", {"packing": True}))
    for variant, update in variants:
        if variant != "lorabench" and time.perf_counter() > deadline - 60:
            report.setdefault("skipped", []).append(variant)
            continue
        torch.manual_seed(0)
        model = add_lora(base, preset.lora)
        choose_attention(model)
        report[variant] = train_variant(stages, model, update)
        if variant == "lorabench":
            seconds = report[variant]["seconds_per_epoch"]
            report["speedup_b_over_a"] = round(report["recipe"]["seconds_per_epoch_extrapolated"] / seconds, 2)
            if name != "roberta-large":
                report["predict"] = timed_prediction(stages, model, test, args.predict_batch)
        base = model.unload()
        save(report)
    del model
    if args.qlora and not is_encoder(name):
        if time.perf_counter() > deadline - 120:
            report.setdefault("skipped", []).append("lorabench_4bit")
        else:
            report["lorabench_4bit"] = qlora_variant(stages, base, args.qlora_rows)
            save(report)
    del base
    empty_cache(device)
    return report


def recipe_stage(stages: Stages, model, rows: int) -> dict:
    """(a) the recipe on the first `rows` rows: fp32 weights, fp16 autocast, checkpointing, batches of 8; its
    seconds per epoch extrapolated from the steady samples/s after 5 warm-up steps (it is too slow for an epoch)."""
    device, train = stages.device, stages.train
    subset = first_rows(train, rows)
    step_times: list[float] = []

    def step_end():
        sync(device)
        step_times.append(time.perf_counter())

    reset_peak(device)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = recipe_trainer(
            model,
            subset,
            stages.preset.train,
            stages.pad_id,
            device,
            1,
            Path(scratch),
            [recipe_callback(on_step_end=step_end)],
        )
        begun = time.perf_counter()
        trainer.train()
    steady = np.diff(step_times[4:])
    rate = RECIPE_BATCH / float(np.median(steady))
    epoch = len(train) / rate
    return {
        "rows_run": len(subset),
        "wall_seconds": round(time.perf_counter() - begun, 1),
        "samples_per_second": round(rate, 2),
        "seconds_per_epoch_extrapolated": round(epoch, 1),
        **gpu_mfu(stages.flops_per_epoch, epoch, stages.peak),
        "peak_memory_mb": peak_memory_mb(device),
    }


def train_variant(stages: Stages, model, update: dict, rows: int | None = None, quantize: str = "none") -> dict:
    """One epoch of `lorabench.training.lora_recipe.fit` on the first `rows` training rows (all by default) with the
    preset's settings plus `update`; its figures, seconds per epoch scaled to 6090 rows."""
    train, validation = first_rows(stages.train, rows), stages.validation
    settings = stages.preset.train.model_copy(update=update)
    config = RunConfig(
        model=ModelConfig(name=stages.name, source="random weights", quantize=quantize),
        lora=stages.preset.lora,
        train=settings,
    )
    frame = lambda rows: pd.DataFrame({"text": [""] * len(rows), "label": rows.labels})  # noqa: E731
    splits = TextSplits(train=frame(train), validation=frame(validation), test=None, label_names=[0, 1])
    prepared = Prepared(config, splits, StubTokenizer(stages.pad_id), model, train, validation, None)
    reset_peak(stages.device)
    with tempfile.TemporaryDirectory() as scratch:
        run = record.RunDir(Path(scratch) / "run")
        run.prepare(config, resume=False)
        summary = fit(prepared, run)
        seconds = run.metrics()[0]["seconds"]
    flops = stages.flops_per_epoch * len(train) / GPU_EPOCH_ROWS
    return {
        "rows": len(train),
        "batch_tokens": settings.batch_tokens,
        "effective_batch_tokens": summary.effective_batch.get("tokens"),
        "lr": summary.lr,
        "packing": settings.packing,
        "quantize": quantize,
        "seconds_per_epoch": round(seconds * GPU_EPOCH_ROWS / len(train), 2),
        "samples_per_second": round(len(train) / seconds, 1),
        **gpu_mfu(flops, seconds, stages.peak),
        "peak_memory_mb": summary.peak_memory_mb,
        "precision": summary.precision,
        "attention": model.config._attn_implementation,
    }


def qlora_variant(stages: Stages, base, rows: int) -> dict:
    """lorabench's `--quantize 4bit` path on the same random weights: saved as bf16 safetensors, loaded back
    through `lorabench.models.weights.load_base_model` (bitsandbytes NF4, double quantization, bf16 compute,
    `prepare_model_for_kbit_training`), trained on the first `rows` rows (s/epoch scaled to 6090)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"skipped": "bitsandbytes is not installed on this machine"}
    from lorabench.models.weights import load_base_model, resolve_source

    with tempfile.TemporaryDirectory(dir=os.environ.get("QLORA_SCRATCH")) as scratch:
        base.to(torch.bfloat16).save_pretrained(scratch)
        base.to("cpu")  # out of the GPU, so the peak below is the 4-bit model's own
        empty_cache(stages.device)
        model_config = ModelConfig(name=stages.name, source=scratch, quantize="4bit")
        started = time.perf_counter()
        quantized = load_base_model(resolve_source(model_config), model_config, [0, 1], stages.pad_id)
        load_seconds = time.perf_counter() - started
    torch.manual_seed(0)
    model = add_lora(quantized, stages.preset.lora)
    choose_attention(model)
    report = train_variant(stages, model, {}, rows, quantize="4bit")
    report["load_and_quantize_seconds"] = round(load_seconds, 1)
    del model, quantized
    return report


def timed_prediction(stages: Stages, model, rows: Encoded, batch_rows: int) -> dict:
    """Prediction throughput (bf16 on CUDA), length-sorted batches of `batch_rows`, after one pass over the
    validation rows to warm up."""
    device, pad_id = stages.device, stages.pad_id
    amp = torch.bfloat16 if device.type == "cuda" else None
    predict_proba(model, stages.validation, batch_rows, device, amp, pad_id, "right", "warm-up")
    sync(device)
    started = time.perf_counter()
    predict_proba(model, rows, batch_rows, device, amp, pad_id, "right", "predict")
    sync(device)
    elapsed = time.perf_counter() - started
    flops = model_flops(model.get_base_model(), rows.lengths, training=False)
    return {
        "rows": len(rows),
        "batch_rows": batch_rows,
        "seconds": round(elapsed, 2),
        "samples_per_second": round(len(rows) / elapsed, 1),
        **gpu_mfu(flops, elapsed, stages.peak),
    }
