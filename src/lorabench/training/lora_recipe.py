"""Stage 4: fine-tuning a pretrained transformer - a LoRA adapter of any variant (model.method), or every weight
(`full`) - with class-weighted cross-entropy, evaluated every epoch, best epoch by F1.

The loop is written out instead of using `transformers.Trainer` because the Trainer keeps the best model by a
single metric of its own evaluation loop and its samplers; here batches come from (seed, epoch) so a resumed
run is exact, the best epoch is chosen by validation F1, and the record is written atomically epoch by epoch.
Shaped like torchtune's recipes: `setup` builds everything once, `train` is the loop, and `save_checkpoint` /
`load_checkpoint` hold what an exact resume needs. transformers and peft are imported where they are used: they
take seconds to import, and every command's module graph reaches this one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.core.config import RunConfig
from lorabench.core.console import progress_bar, say, set_progress
from lorabench.core.errors import LorabenchError, stage
from lorabench.core.metrics import classification_metrics, predicted_labels
from lorabench.core.runtime import (
    autocast_dtype,
    free_memory_bytes,
    package_versions,
    peak_memory_mb,
    precision_name,
)
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import CHECKPOINT_DIR, RunDir
from lorabench.data.batching import MIN_STEPS_PER_EPOCH, epoch_batches, step_budget
from lorabench.data.statistics import class_weights
from lorabench.models.lora import (
    FULL_KIND,
    PISSA_INITIAL_DIR,
    FullClassifier,
    LoraClassifier,
    initial_adapter,
    load_trainable_state,
    optimizer_for,
    parameter_counts,
    trainable_state,
)
from lorabench.models.memory import batch_activation_bytes
from lorabench.models.packing import batch_logits, own_pooling
from lorabench.training import distributed
from lorabench.training.preparation import Prepared, prepare
from lorabench.training.records import finish_run
from lorabench.training.state import TrainState, read_checkpoint, write_checkpoint
from lorabench.training.tracking import make_tracker

EpochCallback = Callable[[int, dict], None]
VERSIONED_PACKAGES = ("torch", "transformers", "peft")


def train_lora(
    config: RunConfig, out_dir: str | Path, resume: bool = False, on_epoch_end: EpochCallback | None = None
) -> RunSummary:
    """Fine-tune `config.model` on `config.data`, writing the run record to `out_dir`; returns the summary.

    `on_epoch_end(epoch, metrics_row)` is called after each validation (a sweep reports and prunes there).
    """
    world = distributed.world()
    if not world.is_main:
        set_progress(False)  # one console: rank 0's
    run = RunDir(out_dir)
    # only rank 0 touches the record; a refusal there is raised on every process
    distributed.on_main(lambda: run.check(config, resume), world)  # before the slow loading
    with stage("loading the data and the model", config.model.name):
        prepared = prepare(config)
    can_resume = distributed.on_main(lambda: run.prepare(config, resume), world)
    return fit(prepared, run, can_resume, on_epoch_end)


def fit(prepared: Prepared, run: RunDir, resume: bool = False, on_epoch_end: EpochCallback | None = None) -> RunSummary:
    """Train prepared data and model into a prepared run directory (the benchmarks call this directly)."""
    name = prepared.config.model.name
    recipe = LoraRecipe(prepared, run, distributed.world())
    with stage("setting up training", name):
        recipe.setup(resume=resume)
    recipe.train(on_epoch_end)
    with stage("scoring the best epoch and writing the summary", name):
        return recipe.finish()


class LoraRecipe:
    """One LoRA training run: `setup`, then `train`, then `finish`; its progress is `self.state`."""

    def __init__(self, prepared: Prepared, run: RunDir, world: distributed.World):
        self.prepared, self.run, self.world = prepared, run, world
        self.settings = prepared.config.train
        self.model = prepared.model
        self.device = world.device()
        self.state = TrainState()
        self.best_validation: np.ndarray | None = None  # the best epoch's, when it ran in this process

    def setup(self, resume: bool) -> None:
        """Device and precision, batch budget and lr, checkpointing, loss, optimizer and schedule; then the
        checkpoint when resuming."""
        settings = self.settings
        if self.world.distributed and settings.packing:
            raise LorabenchError("train.packing does not run under several processes yet; set it to false")
        if self.world.distributed and self.prepared.pooling == "mean":
            # the mean goes around the DDP wrapper's forward (packing.padded_logits), which syncs gradients
            raise LorabenchError(
                "model.pooling mean does not run under several processes yet; set model.pooling to "
                f"{own_pooling(self.model)} or train in one process"
            )
        self.amp_dtype = autocast_dtype(settings.precision, self.device)
        self._place_model()
        self._choose_batches()
        checkpointing = self._choose_checkpointing()
        self.counts = parameter_counts(self.model)
        say(self._start_line(checkpointing))
        labels = self.prepared.train.labels
        self.class_weights = torch.tensor(class_weights(labels, self.prepared.splits.num_labels), dtype=torch.float32)
        # Summed here and divided by the whole (global) batch's weight in `_step`: the class-weighted mean of the
        # batch, split exactly across processes.
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=self.class_weights.to(self.device), reduction="sum")
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trained_model = distributed.wrap(self.model, self.world)
        self.optimizer = optimizer_for(self.prepared.config.method, self.model, self.trainable, self.lr,
                                       settings.weight_decay)  # fmt: skip
        from transformers import get_scheduler  # deferred: seconds to import (module docstring)

        total_steps = self.steps_per_epoch * settings.epochs
        schedule = settings.scheduler if settings.scheduler != "constant" else "constant_with_warmup"
        self.scheduler = get_scheduler(
            schedule,
            self.optimizer,
            num_warmup_steps=int(settings.warmup * total_steps),
            num_training_steps=total_steps,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        classifier_type = FullClassifier if self.prepared.config.kind == FULL_KIND else LoraClassifier
        pissa = self.prepared.config.method == "pissa"
        initial = initial_adapter(self.model, self.run.file(PISSA_INITIAL_DIR), self.world.is_main) if pissa else None
        self.classifier = classifier_type(
            self.model, self.prepared.tokenizer, self.prepared.splits.label_names, None, settings.max_length,
            settings.eval_batch_size, self.device, autocast_dtype(settings.precision, self.device, training=False),
            settings.packing, self.prepared.pooling, initial, self.prepared.config.data.long_texts,
        )  # fmt: skip
        if resume:
            self.load_checkpoint()
            at_step = f" step {self.state.step}" if self.state.step else ""
            say(f"resuming after epoch {self.state.epoch}{at_step} of {settings.epochs}")
        tracked = settings.tracking if self.world.is_main else []
        config = self.prepared.config.model_dump(mode="json")
        self.tracker = make_tracker(tracked, self.run.path, config, self.run.path.name)

    def train(self, on_epoch_end: EpochCallback | None = None) -> None:
        """Every remaining epoch: train, validate, keep the best adapter, checkpoint; then the epoch's callback
        (outside the failure wrapping: a sweep's pruning signal passes through as it is). Stops early when
        `train.patience` epochs in a row brought no better validation F1."""
        for epoch in range(self.state.epoch + 1, self.settings.epochs + 1):
            if self.out_of_patience:  # checked before each epoch, so a resumed run stops where it would have
                break
            with stage(f"epoch {epoch}", self.prepared.config.model.name):
                row = self._run_epoch(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)

    @property
    def out_of_patience(self) -> bool:
        """Whether the last `train.patience` epochs brought no better validation F1 (TrainState has all it needs,
        so a resumed run decides as the uninterrupted one)."""
        patience = self.settings.patience
        return patience is not None and self.state.epoch - self.state.best_epoch >= patience

    def _run_epoch(self, epoch: int) -> dict:
        train_loss = self._train_epoch(epoch)
        probabilities = self._validate(epoch)
        validation = classification_metrics(
            self.prepared.validation.labels, predicted_labels(probabilities), self.prepared.splits.num_labels
        )
        row = {"epoch": epoch, "train_loss": round(train_loss, 6),
               **{f"val_{k}": v for k, v in validation.model_dump().items()},
               "seconds": round(self.state.train_seconds, 2)}  # fmt: skip
        self.tracker.log(row, step=epoch)
        say(f"epoch {epoch}: train loss {train_loss:.4f}, val F1 {validation.f1:.4f}, "
            f"accuracy {validation.accuracy:.4f}")  # fmt: skip
        improved = validation.f1 > self.state.best_f1
        if improved:
            self.state.best_f1, self.state.best_epoch = validation.f1, epoch
            self.best_validation = probabilities  # the summary reuses them instead of scoring validation again
        self.state.epoch = epoch
        if self.world.is_main:
            self.run.append_metrics(row)
            if improved:
                self.classifier.save(self.run.path)
        self.save_checkpoint(self.state)
        return row

    def _train_epoch(self, epoch: int) -> float:
        """One epoch's optimizer steps (from a mid-epoch checkpoint's step on); returns its mean training loss."""
        done = self.state.step  # batches of this epoch already trained before a resume
        if not done:
            # dropout draws depend only on (seed, epoch) and, so that processes do not repeat each other's
            # masks, on the rank: rank 0 keeps the single-process seed; the offset stays within the low
            # 32 bits, all that torch's CPU generator uses
            torch.manual_seed(self.settings.seed * 1_000 + epoch + 1_000_003 * self.world.rank)
        self.model.train()
        started = time.perf_counter()
        batches = self._batches(epoch)
        with progress_bar(f"epoch {epoch}/{self.settings.epochs}", len(batches)) as bar:
            bar.advance(done)
            for step, rows in enumerate(batches[done:], start=done + 1):
                batch_loss = self._step(rows, epoch)
                self.state.loss_sum += batch_loss * len(rows)
                self.state.rows_seen += len(rows)
                bar.advance(1, info=f"loss {self.state.loss_sum / self.state.rows_seen:.4f}")
                if self._mid_epoch_checkpoint_due(epoch, step, len(batches)):
                    seconds = self.state.train_seconds + time.perf_counter() - started
                    self.save_checkpoint(dataclasses.replace(self.state, step=step, train_seconds=seconds))
        train_loss = self.state.loss_sum / self.state.rows_seen
        self.state.step, self.state.loss_sum, self.state.rows_seen = 0, 0.0, 0
        self.state.train_seconds += time.perf_counter() - started
        return train_loss

    def _step(self, rows: np.ndarray, epoch: int) -> float:
        """One optimizer step on one global batch; returns the batch's loss (the same on every process)."""
        train = self.prepared.train
        mine = self.world.shard(rows)
        # a process left without rows (a batch smaller than the launch) joins the step with weight 0
        share = 1.0 if len(mine) else 0.0
        mine = mine if len(mine) else rows[:1]
        sequences = [train.input_ids[i] for i in mine]
        labels = torch.from_numpy(train.labels[mine]).to(self.device)
        pad_id, side = self.prepared.tokenizer.pad_token_id, self.prepared.tokenizer.padding_side
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = batch_logits(self.trained_model, sequences, pad_id, side, self.device, self.settings.packing,
                                  self.prepared.pooling)  # fmt: skip
        batch_weight = self.class_weights[train.labels[rows]].sum().item()
        loss = share * self.loss_fn(logits.float(), labels) / batch_weight  # this process's part of the mean
        batch_loss = distributed.sum_all(loss.item(), self.world)
        if not math.isfinite(batch_loss):
            raise LorabenchError(f"training diverged at epoch {epoch} (loss {batch_loss}); lower --lr")
        # DDP averages gradients over the processes; scaling by their number makes that a sum
        self.scaler.scale(loss * self.world.size).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return batch_loss

    def _validate(self, epoch: int) -> np.ndarray:
        """Validation probabilities: each process scores every N-th row, and every process gets all of them."""
        validation = self.prepared.validation
        shown = self.world.shard(np.arange(len(validation)))
        scored = self.classifier.score(validation.subset(shown), f"validate epoch {epoch}")
        return distributed.gather_rows(scored, shown, len(validation), self.world)

    def finish(self) -> RunSummary:
        """Rank 0 scores the best epoch and writes the summary; every process returns it."""
        summary = distributed.on_main(self._record_best_epoch, self.world)
        self.tracker.finish(summary.model_dump())
        return summary

    def _record_best_epoch(self) -> RunSummary:
        self.classifier.restore_saved(self.run.path)
        config = self.prepared.config
        stopped_early_after = self.state.epoch if self.state.epoch < self.settings.epochs else None
        if stopped_early_after:
            note = (f"stopped early after epoch {stopped_early_after} of {self.settings.epochs}: no better "
                    f"validation F1 for {self.settings.patience} epochs (train.patience)")  # fmt: skip
            say(f"note: {note}")
            self.prepared.splits.notes.append(note)
        details = {
            "best_epoch": self.state.best_epoch,
            "epochs": self.settings.epochs,
            "train_seconds": round(self.state.train_seconds, 2),
            "peak_memory_mb": peak_memory_mb(self.device),
            **self.counts,
            "truncated_texts": self.prepared.truncated_texts,
            "device": self.device.type,
            "processes": self.world.size,
            # N processes train one global batch per step: N x the per-process budget (tokens, or rows)
            "effective_batch": {"tokens": self.used_tokens} if self.used_tokens else {"rows": self.global_rows},
            "lr": self.lr,
            "precision": precision_name(self.amp_dtype),
            "versions": package_versions(VERSIONED_PACKAGES),
            "stopped_early_after": stopped_early_after,
            "pooling": self.prepared.pooling,
            "method": config.method,
        }

        def score(split: str, frame: pd.DataFrame) -> np.ndarray:
            if config.data.long_texts == "windows":  # each epoch's validation was truncated: score it again
                return self.classifier.predict_proba(frame["text"].tolist())
            if split == "val" and self.best_validation is not None:
                return self.best_validation  # scored by these very weights at the best epoch
            return self.classifier.score(self.prepared.encoded(split), f"score {split}")

        return finish_run(
            self.classifier, self.prepared.splits, self.run, config.model.name, config.model.source, details, score
        )

    def save_checkpoint(self, state: TrainState) -> None:
        """Everything the loop needs to continue exactly: weights, optimizer, schedule, loss scale, every
        process's random state (dropout mid-epoch; each process drew for its own rows) and `state`, swapped in
        as one directory by rank 0. Called on every process."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        random_states = distributed.gather_all({"cpu": torch.get_rng_state(), "cuda": cuda}, self.world)
        if self.world.is_main:
            tensors = {"trainable": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                       "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                       "rng": random_states}  # fmt: skip
            write_checkpoint(self.run.file(CHECKPOINT_DIR), tensors, state, self.world.size)

    def load_checkpoint(self) -> None:
        saved, self.state = read_checkpoint(self.run.file(CHECKPOINT_DIR), self.world.size)
        load_trainable_state(self.model, saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        mine = saved["rng"][self.world.rank]
        torch.set_rng_state(mine["cpu"])
        if mine["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda"])

    def _place_model(self) -> None:
        quantized = self.prepared.config.model.quantize != "none"  # bitsandbytes already placed and typed it
        if quantized:
            return
        self.model.to(self.device)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cuda":
            # the frozen base weights in bf16: half the memory and no cast per step; LoRA and the head stay fp32
            for param in self.model.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(self.amp_dtype)

    def _choose_batches(self) -> None:
        """Each step trains one global batch of `processes` x the per-process budget, split across the processes;
        small data lowers the token budget (at least MIN_STEPS_PER_EPOCH steps). lr follows the global batch
        actually trained, never the launch (train.lr_batch_tokens)."""
        settings, lengths = self.settings, self.prepared.train.lengths
        self.global_tokens = settings.batch_tokens * self.world.size or None
        self.global_rows = settings.batch_size * self.world.size
        self.used_tokens = step_budget(lengths, self.global_tokens) if self.global_tokens else None
        self.lr = settings.full_lr if self.prepared.config.kind == FULL_KIND else settings.lr
        if self.used_tokens and self.used_tokens < self.global_tokens:
            say(f"note: {int(lengths.sum()):,} training tokens: batches of {self.used_tokens} tokens instead of "
                f"{self.global_tokens} (at least {MIN_STEPS_PER_EPOCH} steps per epoch)")  # fmt: skip
        if settings.scale_lr_with_batch and self.used_tokens and self.used_tokens < settings.lr_batch_tokens:
            self.lr *= math.sqrt(self.used_tokens / settings.lr_batch_tokens)
            say(f"note: lr scaled to {self.lr:.3g} for batches of {self.used_tokens} tokens "
                f"(tuned for {settings.lr_batch_tokens}; train.scale_lr_with_batch)")  # fmt: skip
        self.steps_per_epoch = len(self._batches(1))

    def _batches(self, epoch: int) -> list[np.ndarray]:
        lengths = self.prepared.train.lengths
        return epoch_batches(lengths, self.global_rows, self.settings.seed, epoch, self.global_tokens)

    def _choose_checkpointing(self) -> bool:
        """Gradient checkpointing as configured; `auto`: only when one batch's estimated activations would not
        fit in the free memory."""
        checkpointing = self.settings.gradient_checkpointing
        if checkpointing == "auto":
            need = batch_activation_bytes(self.model, self.prepared.train.lengths, self.settings, self.amp_dtype)
            checkpointing = need > 0.8 * free_memory_bytes(self.device)
        if checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return bool(checkpointing)

    def _mid_epoch_checkpoint_due(self, epoch: int, step: int, steps: int) -> bool:
        every = self.settings.save_every_steps
        return bool(every) and step < steps and ((epoch - 1) * self.steps_per_epoch + step) % every == 0

    def _start_line(self, checkpointing: bool) -> str:
        counts, model = self.counts, self.model
        batch = f"batches of {self.used_tokens} tokens" if self.used_tokens else f"batches of {self.global_rows} rows"
        return (
            f"{self.prepared.config.model.name}: {counts['trainable_params']:,} trainable of "
            f"{counts['total_params']:,} parameters ({counts['trainable_percent']:.4f}%) on {self.device.type}, "
            f"precision {precision_name(self.amp_dtype)}, {model.config._attn_implementation} attention, {batch}"
            + (f" split across {self.world.size} processes" if self.world.distributed else "")
            + (", packed" if self.settings.packing else "")
            + (", gradient checkpointing" if checkpointing else "")
        )
