"""Side (a): the study's recipe as it wrote it, on transformers.Trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from lorabench.core.config import TrainSettings
from lorabench.data.statistics import class_weights
from lorabench.data.tokenization import Encoded, pad_batch

RECIPE_BATCH = 8


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
        **warmup_arguments(settings.warmup),
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


def warmup_arguments(fraction: float) -> dict:
    """transformers 5 takes the warm-up fraction as `warmup_steps` (< 1); older 5.x releases as `warmup_ratio`."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"warmup_ratio": fraction} if "warmup_ratio" in fields else {"warmup_steps": fraction}


def recipe_callback(on_step_begin=None, on_step_end=None, on_epoch_end=None):
    """Trainer's hooks as plain functions: the benchmark's clocks start and stop on them."""
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if on_step_begin:
                on_step_begin()

        def on_step_end(self, args, state, control, **kwargs):
            if on_step_end:
                on_step_end()

        def on_epoch_end(self, args, state, control, **kwargs):
            if on_epoch_end:
                on_epoch_end(kwargs["model"])

    return Hooks()
