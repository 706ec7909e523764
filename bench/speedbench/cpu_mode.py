"""CPU mode: real models on the real tweets, the two sides in two threads taking turns, so load from other
processes on a shared machine falls on both alike."""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from lorabench.core import storage as record
from lorabench.core.config import resolve_config
from lorabench.core.metrics import classification_metrics, predicted_labels
from lorabench.core.runtime import peak_memory_mb
from lorabench.data.tokenization import Encoded
from lorabench.models.lora import score_encoded as predict_proba
from lorabench.training.lora_recipe import fit
from lorabench.training.preparation import prepare
from speedbench.measure import cpu_nominal_flops, model_flops
from speedbench.recipe import RECIPE_BATCH, recipe_callback, recipe_trainer


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


def validation_f1(model, validation: Encoded, pad_id: int, side: str, device, amp_dtype) -> float:
    probabilities = predict_proba(model, validation, 128, device, amp_dtype, pad_id, side, "bench validation")
    return classification_metrics(validation.labels, predicted_labels(probabilities), 2).f1


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


def cpu_model(name: str, args, peak: float) -> dict:
    """Both sides on one preset model from the same initial weights, interleaved; each scored after every epoch."""
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
                    [recipe_callback(step_begin, step_end, epoch_end)],
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
