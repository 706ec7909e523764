"""Speed benchmark (not a test): the study's recipe against lorabench's defaults, same model, same rows, one process.

(a) recipe: transformers.Trainer as the study wrote it - batches of 8 random rows padded to their longest
    (dynamic padding), fp32 weights (+ fp16 autocast on CUDA), gradient checkpointing, constant schedule after
    warm-up, class-weighted cross-entropy (`compute_loss_func`), the model's default (SDPA) attention.
(b) lorabench: `lorabench.training.lora_recipe.fit` with every default (token-budget batches of sorted rows, no checkpointing
    unless memory needs it, attention per architecture, bf16 on CUDA).
Both start from the same initial weights and use the same LoRA settings, learning rate and epochs (the preset's).

CPU mode (`--device cpu`): real models (minilm, smollm2) on the real disaster tweets. The two sides run in two
threads that take turns of `--slice-s` seconds of training (only one computes at a time), so load from other
processes on a shared machine falls on both alike; each side's clock runs only during its own training steps.
Both are scored on the full validation split after every epoch by the same code
(`lorabench.models.lora.score_encoded`, not timed).

GPU mode (`--device cuda`): RoBERTa-large, Mistral-7B and Llama-2-7B built from their configurations (written out
below, no hub) with random weights, fed random token ids with the real tweets' token lengths
(bench/tweet_lengths.json), so throughput is real and F1 is meaningless. The recipe runs `--recipe-rows` rows
(it is slow: seconds per epoch are extrapolated from its steady samples/s), lorabench a full epoch of 6090.
Stages run in priority order while `--budget-s` lasts; results are rewritten to `--out` after every stage.

MFU = model FLOPs / time / peak. Model FLOPs per training token: 4 x (weights of the linear layers) for a frozen
base (forward 2N + input gradients 2N; LoRA's own are negligible) + 12 x hidden x layers x length for attention
scores (forward 4, backward 8); recomputation by checkpointing and padding tokens are not counted (they are the
waste). Prediction: 2N + 4 x hidden x layers x length. Peak = a large dense matrix product measured in this
process (fp32 on CPU, bf16 on CUDA; under load from other processes it reads low), and nominal: on CPU the
clock x 32 fp32 FLOP per cycle per thread (AVX2), on the GPU the H200's 989 bf16 TFLOP/s.

  python bench/speed.py --device cpu --models minilm --rows 1500 --epochs 3 --out bench/results-cpu.json
  python bench/speed.py --device cuda --budget-s 480 --out $OUT/gpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.core import storage as record
from lorabench.core.config import ModelConfig, RunConfig, TrainSettings, resolve_config
from lorabench.core.console import quiet_libraries, set_progress
from lorabench.core.metrics import classification_metrics, predicted_labels
from lorabench.data.sources import TextSplits
from lorabench.data.statistics import class_weights
from lorabench.data.tokenization import Encoded, pad_batch
from lorabench.models.lora import add_lora
from lorabench.models.lora import score_encoded as predict_proba
from lorabench.models.packing import choose_attention
from lorabench.training.lora_recipe import Prepared, fit, prepare

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "disaster_tweets"
LENGTHS = Path(__file__).with_name("tweet_lengths.json")
H200_BF16_NOMINAL = 989e12
GPU_EPOCH_ROWS = 6090  # the training split of bench/tweet_lengths.json: one epoch of the study
RECIPE_BATCH = 8

# The real architectures (config.json of FacebookAI/roberta-large, mistralai/Mistral-7B-v0.1, meta-llama/Llama-2-7b-hf);
# LoRA settings, lr and lengths table per model. Priority order: the main target first.
GPU_MODELS = {
    "mistral-7b": {
        "kind": "mistral",
        "lengths": "mistral",
        "config": dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            sliding_window=4096,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=False,
        ),
    },
    "roberta-large": {
        "kind": "roberta",
        "lengths": "roberta",
        "config": dict(
            vocab_size=50265,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    },
    "llama-2-7b": {
        "kind": "llama",
        "lengths": "mistral",
        "config": dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=False,
        ),
    },
}


# ---------------------------------------------------------------------------------------------- FLOPs and peaks


def linear_weights(model) -> int:
    """Weights of the base model's linear layers (LoRA's excluded): the N of 2N FLOPs per token."""
    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    )


def model_flops(model, lengths: np.ndarray, training: bool) -> float:
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
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------------------------- interleaving


class Baton:
    """Two threads take turns (a time slice each), so only one computes at a time."""

    def __init__(self, first: str, second: str):
        self.turn, self.sides, self.finished, self.error = first, (first, second), set(), None
        self.condition = threading.Condition()

    def wait(self, side: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == side or self.error is not None)
            if self.error is not None:
                raise RuntimeError("the other side failed")

    def hand_over(self, side: str, finished: bool = False, error: BaseException | None = None) -> None:
        with self.condition:
            if finished:
                self.finished.add(side)
            if error is not None:
                self.error = error
            other = self.sides[1] if side == self.sides[0] else self.sides[0]
            if other not in self.finished:
                self.turn = other
            self.condition.notify_all()


# ---------------------------------------------------------------------------------------------- the two sides


def recipe_trainer(
    model,
    train: Encoded,
    settings: TrainSettings,
    pad_id: int,
    device: torch.device,
    epochs: int,
    out_dir: Path,
    callbacks: list,
):
    """The study's Trainer set-up. Dynamic padding pads each batch to its longest row, as DataCollatorWithPadding
    does (the GPU mode has no tokenizer to hand it)."""
    from transformers import Trainer, TrainingArguments

    weights = torch.tensor(class_weights(train.labels, 2), dtype=torch.float32, device=device)

    def weighted_loss(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs["logits"].float(), labels, weight=weights)

    def collate(rows):
        batch = pad_batch([row["input_ids"] for row in rows], pad_id, "right")
        batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch

    arguments = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=RECIPE_BATCH,
        num_train_epochs=epochs,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        **_warmup(settings.warmup),
        lr_scheduler_type="constant_with_warmup",
        max_grad_norm=settings.max_grad_norm,
        gradient_checkpointing=True,
        fp16=device.type == "cuda",
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_num_workers=0,
    )
    dataset = [
        {"input_ids": ids, "label": int(label)} for ids, label in zip(train.input_ids, train.labels, strict=True)
    ]
    return Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        data_collator=collate,
        compute_loss_func=weighted_loss,
        callbacks=callbacks,
    )


def _warmup(fraction: float) -> dict:
    """transformers 5 takes the warm-up fraction as `warmup_steps` (< 1); older 5.x releases as `warmup_ratio`."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"warmup_ratio": fraction} if "warmup_ratio" in fields else {"warmup_steps": fraction}


def recipe_callback(on_epoch_begin, on_epoch_end, on_step_end=None, on_step_begin=None):
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if on_step_begin:
                on_step_begin()

        def on_epoch_begin(self, args, state, control, **kwargs):
            on_epoch_begin()

        def on_epoch_end(self, args, state, control, **kwargs):
            on_epoch_end(kwargs["model"])

        def on_step_end(self, args, state, control, **kwargs):
            if on_step_end:
                on_step_end()

    return Hooks()


def validation_f1(model, validation: Encoded, pad_id: int, side: str, device, amp_dtype) -> float:
    probabilities = predict_proba(model, validation, 128, device, amp_dtype, pad_id, side, "bench validation")
    return classification_metrics(validation.labels, predicted_labels(probabilities), 2).f1


def cpu_nominal_flops() -> float:
    """fp32 peak of the threads torch uses: clock (/proc/cpuinfo) x 32 FLOP per cycle (AVX2: two 8-wide FMA units)."""
    mhz = next(
        float(line.split(":")[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("cpu MHz")
    )
    return torch.get_num_threads() * mhz * 1e6 * 32


def side_summary(rows: int, seconds: list[float], flops_per_epoch: float, peak: float, **extra) -> dict:
    per_epoch = float(np.mean(seconds))
    return {
        "seconds_per_epoch": [round(s, 2) for s in seconds],
        "mean_seconds_per_epoch": round(per_epoch, 2),
        "samples_per_second": round(rows / per_epoch, 2),
        "model_tflops_per_epoch": round(flops_per_epoch / 1e12, 4),
        "mfu_vs_measured_matmul": round(flops_per_epoch / per_epoch / peak, 4),
        "mfu_vs_nominal": round(flops_per_epoch / per_epoch / cpu_nominal_flops(), 4),
        **extra,
    }


# ---------------------------------------------------------------------------------------------- CPU mode


def cpu_model(name: str, args, peak: float) -> dict:
    overrides = {
        "data": {"source": str(args.data), "max_train_rows": args.rows},
        "train": {"epochs": args.epochs, "tracking": "none"},
    }
    if name == "smollm2":
        overrides["train"]["max_length"] = 128
    config = resolve_config(name, overrides=overrides)
    prepared = prepare(config)
    prepared.test = prepared.splits.test = None  # Kaggle's unlabelled test rows: nothing to measure there
    recipe_model = copy.deepcopy(prepared.model)  # the same initial LoRA and head weights on both sides
    recipe_model.get_base_model().set_attn_implementation("sdpa")  # transformers' default, as the study ran
    train, validation = prepared.train, prepared.validation
    pad_id, side = prepared.tokenizer.pad_token_id, prepared.tokenizer.padding_side
    flops = model_flops(prepared.model.get_base_model(), train.lengths, training=True)
    cpu = torch.device("cpu")
    baton = Baton("recipe", "lorabench")
    # the study's recipe may keep its own lr (1e-4): a preset's lr tuned for large batches can break 8-row ones
    recipe_settings = config.train.model_copy(update={"lr": args.recipe_lr}) if args.recipe_lr else config.train
    # cumulative training seconds at the end of each epoch, and validation F1 after it
    results = {"recipe": {"seconds": [], "f1": []}, "lorabench": {"seconds": [], "f1": []}}

    def run_recipe():
        clock = {"turn": None, "step": 0.0, "seconds": 0.0}

        def take_turn():
            if clock["turn"] is None:
                baton.wait("recipe")
                clock["turn"] = time.perf_counter()

        def step_begin():
            take_turn()
            clock["step"] = time.perf_counter()

        def step_end():
            now = time.perf_counter()
            clock["seconds"] += now - clock["step"]
            if now - clock["turn"] >= args.slice_s:
                clock["turn"] = None
                baton.hand_over("recipe")

        def epoch_end(model):
            take_turn()  # validation alone on the machine too, but not timed
            results["recipe"]["seconds"].append(clock["seconds"])
            results["recipe"]["f1"].append(validation_f1(model, validation, pad_id, side, cpu, None))
            model.train()

        try:
            with tempfile.TemporaryDirectory() as scratch:
                trainer = recipe_trainer(
                    recipe_model,
                    train,
                    recipe_settings,
                    pad_id,
                    cpu,
                    args.epochs,
                    Path(scratch),
                    [recipe_callback(lambda: None, epoch_end, step_end, step_begin)],
                )
                trainer.train()
            baton.hand_over("recipe", finished=True)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            baton.hand_over("recipe", finished=True, error=err)

    def run_lorabench():
        # fit has no per-step hook: a forward pre-hook on the backbone marks the steps (in training mode the time
        # from one forward to the next is one whole step: forward, backward, optimizer, next batch's inputs)
        clock = {"turn": None, "mark": None, "seconds": 0.0}

        def before_forward(module, args_, kwargs):
            now = time.perf_counter()
            if clock["mark"] is not None:
                clock["seconds"] += now - clock["mark"]
                clock["mark"] = None
            if module.training and clock["turn"] is not None and now - clock["turn"] >= args.slice_s:
                clock["turn"] = None
                baton.hand_over("lorabench")
            if clock["turn"] is None:
                baton.wait("lorabench")
                clock["turn"] = time.perf_counter()
            if module.training:
                clock["mark"] = time.perf_counter()

        def epoch_end(epoch, row):
            results["lorabench"]["seconds"].append(clock["seconds"])
            results["lorabench"]["f1"].append(row["val_f1"])

        hook = prepared.model.get_base_model().base_model.register_forward_pre_hook(before_forward, with_kwargs=True)
        try:
            with tempfile.TemporaryDirectory() as scratch:
                run = record.RunDir(Path(scratch) / "run")
                run.prepare(config, resume=False)
                fit(prepared, run, on_epoch_end=epoch_end)
            baton.hand_over("lorabench", finished=True)
        except BaseException as err:  # noqa: BLE001
            baton.hand_over("lorabench", finished=True, error=err)
        finally:
            hook.remove()

    threads = [threading.Thread(target=run_recipe), threading.Thread(target=run_lorabench)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if baton.error is not None:
        raise baton.error
    rows = len(train)
    report = {
        "model": name,
        "train_rows": rows,
        "validation_rows": len(validation),
        "epochs": args.epochs,
        "train_tokens": int(train.lengths.sum()),
        "settings": {
            "lr": config.train.lr,
            "recipe_lr": recipe_settings.lr,
            "lora": config.lora.model_dump(),
            "batch_tokens": config.train.batch_tokens,
            "recipe_batch_size": RECIPE_BATCH,
        },
        "peak_rss_mb_process": peak_memory_mb(cpu),
    }
    for key in ("recipe", "lorabench"):
        f1 = results[key]["f1"]
        seconds = list(np.diff([0.0] + results[key]["seconds"]))
        report[key] = side_summary(
            rows, seconds, flops, peak, val_f1_per_epoch=f1, val_f1_final=f1[-1], val_f1_best=max(f1)
        )
    report["speedup_b_over_a"] = round(
        report["recipe"]["mean_seconds_per_epoch"] / report["lorabench"]["mean_seconds_per_epoch"], 2
    )
    report["f1_best_b_minus_a"] = round(report["lorabench"]["val_f1_best"] - report["recipe"]["val_f1_best"], 4)
    report["f1_final_b_minus_a"] = round(report["lorabench"]["val_f1_final"] - report["recipe"]["val_f1_final"], 4)
    return report


# ---------------------------------------------------------------------------------------------- GPU mode


class StubTokenizer:
    """What `fit` asks of a tokenizer when the token ids are already made: pad id, side, and saving (nothing)."""

    padding_side = "right"

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def save_pretrained(self, directory) -> None:
        pass


def random_rows(lengths: list[int], vocab_size: int, bos: int, seed: int) -> Encoded:
    """Random ids of the given lengths after a <s>, labels 43% positive as in the tweets."""
    rng = np.random.default_rng(seed)
    ids = [[bos] + rng.integers(3, vocab_size, size=n - 1).tolist() for n in lengths]
    return Encoded(input_ids=ids, labels=(rng.random(len(lengths)) < 0.43).astype(np.int64), truncated=0)


def build(name: str, dtype: torch.dtype, device: torch.device, tiny: bool = False):
    """The real architecture with random weights; `tiny` shrinks it to 2 narrow layers for a smoke run."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig, MistralConfig, RobertaConfig

    spec = GPU_MODELS[name]
    config_class = {"mistral": MistralConfig, "roberta": RobertaConfig, "llama": LlamaConfig}[spec["kind"]]
    sizes = dict(spec["config"])
    if tiny:
        sizes.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        if "num_key_value_heads" in sizes:
            sizes["num_key_value_heads"] = 2
    config = config_class(**sizes, num_labels=2)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype)


def synthetic_model(name: str, args, peak: float, lengths: dict, deadline: float) -> dict:
    device = torch.device(args.device)
    preset = resolve_config(name, overrides={"train": {"epochs": 1, "tracking": "none"}})
    spec = GPU_MODELS[name]
    table = lengths[spec["lengths"]]
    vocab, bos, pad_id = spec["config"]["vocab_size"], spec["config"]["bos_token_id"], spec["config"]["pad_token_id"]
    train = random_rows(table["train"], vocab, bos, 0)
    validation = random_rows(table["validation"], vocab, bos, 1)
    test = random_rows(table["test"], vocab, bos, 2)
    report = {
        "model": name,
        "train_rows": len(train),
        "train_tokens": int(train.lengths.sum()),
        "mean_tokens": round(float(train.lengths.mean()), 1),
    }

    # (a) the recipe: fp32 weights, fp16 autocast, checkpointing, batches of 8, on the first --recipe-rows rows
    started = time.perf_counter()
    model = add_lora(build(name, torch.float32, device, args.tiny), preset.lora)
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    flops_per_epoch = model_flops(model.get_base_model(), train.lengths, training=True)
    subset = Encoded(train.input_ids[: args.recipe_rows], train.labels[: args.recipe_rows], 0)
    step_times: list[float] = []
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = recipe_trainer(
            model,
            subset,
            preset.train,
            pad_id,
            device,
            1,
            Path(scratch),
            [
                recipe_callback(
                    lambda: None, lambda model: None, lambda: (_sync(device), step_times.append(time.perf_counter()))
                )
            ],
        )
        begun = time.perf_counter()
        trainer.train()
    steady = np.diff(step_times[4:])  # after 5 steps of warm-up
    recipe_rate = RECIPE_BATCH / float(np.median(steady))
    recipe_epoch = len(train) / recipe_rate
    report["recipe"] = {
        "rows_run": len(subset),
        "wall_seconds": round(time.perf_counter() - begun, 1),
        "samples_per_second": round(recipe_rate, 2),
        "seconds_per_epoch_extrapolated": round(recipe_epoch, 1),
        "mfu_vs_measured_matmul": round(flops_per_epoch / recipe_epoch / peak, 4),
        "mfu_vs_nominal_989": round(flops_per_epoch / recipe_epoch / H200_BF16_NOMINAL, 4),
        "peak_memory_mb": peak_memory_mb(device),
    }
    del trainer
    base = model.unload()  # the same random weights, LoRA removed; lorabench casts the frozen ones to bf16 itself
    base.gradient_checkpointing_disable()
    _empty_cache(device)
    _write(args.out, report, partial=True)

    # (b) lorabench's defaults: a full epoch, then prediction; then other budgets and packing while time lasts
    variants = [("lorabench", {})] + [(f"lorabench_tokens_{n}", {"batch_tokens": n}) for n in args.more_budgets]
    if args.packed and GPU_MODELS[name]["kind"] != "roberta":
        # decoders only: an encoder's packed row needs a dense (sum of lengths)^2 mask under eager attention
        variants.append(("lorabench_packed", {"packing": True}))
    for variant, update in variants:
        if variant != "lorabench" and time.perf_counter() > deadline - 60:
            report.setdefault("skipped", []).append(variant)
            continue
        torch.manual_seed(0)
        model = add_lora(base, preset.lora)
        choose_attention(model)
        report[variant] = train_variant(
            name, model, preset, update, train, validation, pad_id, device, flops_per_epoch, peak
        )
        if variant == "lorabench":
            seconds = report[variant]["seconds_per_epoch"]
            report["speedup_b_over_a"] = round(report["recipe"]["seconds_per_epoch_extrapolated"] / seconds, 2)
            if name != "roberta-large":
                report["predict"] = timed_prediction(model, validation, test, args.predict_batch, pad_id, peak, device)
        base = model.unload()
        _write(args.out, report, partial=True)
    del model
    if args.qlora and spec["kind"] != "roberta":
        if time.perf_counter() > deadline - 120:
            report.setdefault("skipped", []).append("lorabench_4bit")
        else:
            report["lorabench_4bit"] = qlora_variant(
                name, base, preset, train, validation, pad_id, device, flops_per_epoch, peak, args.qlora_rows
            )
            _write(args.out, report, partial=True)
    del base
    _empty_cache(device)
    return report


def train_variant(
    name: str,
    model,
    preset: RunConfig,
    update: dict,
    train: Encoded,
    validation: Encoded,
    pad_id: int,
    device: torch.device,
    flops_per_epoch: float,
    peak: float,
    quantize: str = "none",
) -> dict:
    """One epoch of `lorabench.training.lora_recipe.fit` on `train` with the preset's settings plus `update`; its figures."""
    settings = preset.train.model_copy(update=update)
    config = RunConfig(
        model=ModelConfig(name=name, source="random weights", quantize=quantize), lora=preset.lora, train=settings
    )
    frame = lambda rows: pd.DataFrame({"text": [""] * len(rows), "label": rows.labels})  # noqa: E731
    splits = TextSplits(train=frame(train), validation=frame(validation), test=None, label_names=[0, 1])
    prepared = Prepared(config, splits, StubTokenizer(pad_id), model, train, validation, None)
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as scratch:
        run = record.RunDir(Path(scratch) / "run")
        run.prepare(config, resume=False)
        summary = fit(prepared, run)
        seconds = run.metrics()[0]["seconds"]
    flops = flops_per_epoch * len(train) / GPU_EPOCH_ROWS  # flops_per_epoch counts the full 6090-row epoch
    return {
        "rows": len(train),
        "batch_tokens": settings.batch_tokens,
        "effective_batch_tokens": summary.effective_batch.get("tokens"),
        "lr": summary.lr,
        "packing": settings.packing,
        "quantize": quantize,
        "seconds_per_epoch": round(seconds * GPU_EPOCH_ROWS / len(train), 2),
        "samples_per_second": round(len(train) / seconds, 1),
        "mfu_vs_measured_matmul": round(flops / seconds / peak, 4),
        "mfu_vs_nominal_989": round(flops / seconds / H200_BF16_NOMINAL, 4),
        "peak_memory_mb": summary.peak_memory_mb,
        "precision": summary.precision,
        "attention": model.config._attn_implementation,
    }


def qlora_variant(
    name: str,
    base,
    preset: RunConfig,
    train: Encoded,
    validation: Encoded,
    pad_id: int,
    device: torch.device,
    flops_per_epoch: float,
    peak: float,
    rows: int,
) -> dict:
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
        _empty_cache(device)
        model_config = ModelConfig(name=name, source=scratch, quantize="4bit")
        started = time.perf_counter()
        quantized = load_base_model(resolve_source(model_config), model_config, [0, 1], pad_id)
        load_seconds = time.perf_counter() - started
    torch.manual_seed(0)
    model = add_lora(quantized, preset.lora)
    choose_attention(model)
    subset = Encoded(train.input_ids[:rows], train.labels[:rows], 0)
    report = train_variant(
        name, model, preset, {}, subset, validation, pad_id, device, flops_per_epoch, peak, quantize="4bit"
    )
    report["load_and_quantize_seconds"] = round(load_seconds, 1)
    del model, quantized
    return report


def timed_prediction(
    model, warm_up: Encoded, rows: Encoded, batch_rows: int, pad_id: int, peak: float, device: torch.device
) -> dict:
    """Prediction throughput (bf16 on CUDA), length-sorted batches of `batch_rows`, after one pass to warm up."""
    amp = torch.bfloat16 if device.type == "cuda" else None
    predict_proba(model, warm_up, batch_rows, device, amp, pad_id, "right", "warm-up")
    _sync(device)
    started = time.perf_counter()
    predict_proba(model, rows, batch_rows, device, amp, pad_id, "right", "predict")
    _sync(device)
    elapsed = time.perf_counter() - started
    flops = model_flops(model.get_base_model(), rows.lengths, training=False)
    return {
        "rows": len(rows),
        "batch_rows": batch_rows,
        "seconds": round(elapsed, 2),
        "samples_per_second": round(len(rows) / elapsed, 1),
        "mfu_vs_measured_matmul": round(flops / elapsed / peak, 4),
        "mfu_vs_nominal_989": round(flops / elapsed / H200_BF16_NOMINAL, 4),
    }


# ---------------------------------------------------------------------------------------------- driver

RESULTS: dict = {}


def _write(path: str | None, model_report: dict | None = None, partial: bool = False) -> None:
    if model_report is not None:
        RESULTS.setdefault("models", {})[model_report["model"]] = {**model_report, "complete": not partial}
    if path:
        record.write_json(Path(path), RESULTS)


def environment(device: torch.device, threads: int) -> dict:
    import peft
    import transformers

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch_threads": threads,
        "nproc": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description="the study's recipe vs lorabench's defaults (see the module doc)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated; cpu: minilm,smollm2 (default minilm); cuda: "
        + ",".join(GPU_MODELS)
        + " (default all, in that order)",
    )
    parser.add_argument("--rows", type=int, default=None, help="cpu: cap the training rows (both sides alike)")
    parser.add_argument("--epochs", type=int, default=3, help="cpu: epochs for both sides")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--slice-s",
        type=float,
        default=2.0,
        help="cpu: the two sides take turns of this many seconds of training (fair under load)",
    )
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument(
        "--recipe-lr",
        type=float,
        default=None,
        help="cpu: the recipe side's learning rate (default: the preset's, as lorabench's side)",
    )
    parser.add_argument("--recipe-rows", type=int, default=400, help="cuda: rows the slow recipe runs")
    parser.add_argument("--predict-batch", type=int, default=256, help="cuda: rows per prediction batch")
    parser.add_argument("--packed", action="store_true", help="cuda: also train the decoders with packed batches")
    parser.add_argument(
        "--more-budgets",
        default="4096",
        type=lambda text: [int(n) for n in text.split(",") if n],
        help="cuda: also train lorabench with these batch_tokens (comma-separated; '' for none; "
        "an epoch of 6090 tweets caps them at about 4300, its 50-step floor)",
    )
    parser.add_argument(
        "--qlora",
        action="store_true",
        help="cuda: also train the decoders through --quantize 4bit (needs bitsandbytes)",
    )
    parser.add_argument("--qlora-rows", type=int, default=2000, help="cuda: rows the 4-bit variant trains")
    parser.add_argument("--budget-s", type=float, default=480, help="cuda: stop starting models after this")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="run the GPU mode's code with 2-layer versions of its models (a smoke check, any device)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    started = time.perf_counter()
    quiet_libraries()
    set_progress(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    RESULTS["environment"] = environment(device, torch.get_num_threads())
    peak = matmul_peak(device)
    RESULTS["environment"]["measured_matmul_tflops"] = round(peak / 1e12, 4)
    RESULTS["arguments"] = vars(args)
    _write(args.out)
    if device.type == "cpu" and not args.tiny:
        for name in (args.models or "minilm").split(","):
            report = cpu_model(name, args, peak)
            _write(args.out, report)
            print(json.dumps(report, indent=1), flush=True)
    else:
        lengths = json.loads(LENGTHS.read_text(encoding="utf-8"))
        deadline = started + args.budget_s
        for name in (args.models or ",".join(GPU_MODELS)).split(","):
            if time.perf_counter() > deadline - 90:
                RESULTS.setdefault("skipped", []).append(name)
                continue
            report = synthetic_model(name, args, peak, lengths, deadline)
            _write(args.out, report)
            print(json.dumps(report, indent=1), flush=True)
    RESULTS["wall_seconds"] = round(time.perf_counter() - started, 1)
    _write(args.out)


if __name__ == "__main__":
    main()
