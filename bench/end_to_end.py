"""End-to-end benchmark (not a test): `lorabench train` against the study's recipe, each as a whole process.

What a user waits for, start to exit: imports, reading and splitting the data, tokenizing, loading the model,
training, scoring and writing results. Both sides train the same model on the same first `--rows` rows of the
study's 80/20 split (seed 42) for `--epochs` and are scored on the same 1523 validation rows; the runs alternate
(lorabench, study, lorabench, study, ...) so load from other processes falls on both alike.

- study: the study's code path as it was written, with the model swapped for minilm (the weights that install
  here): transformers' Trainer, batches of 8 rows with dynamic padding, lr 1e-4 constant after a 10% warm-up,
  max_grad_norm 0.3, weight decay 0.001, gradient checkpointing, class-weighted cross-entropy, LoRA r 2 / alpha 16
  / dropout 0.1 on peft's default targets, fp32 on CPU (fp16 on CUDA), evaluation once per epoch.
- lorabench: `lorabench train --model minilm` with the preset's settings and every default.

  python bench/end_to_end.py --rounds 3                     # the issue's command (Kaggle's test file scored too)
  python bench/end_to_end.py --rounds 3 --data ../shared/data/disaster_tweets/train.csv   # the same work on both sides

`--side study` runs one study process (the driver starts it); it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "disaster_tweets"
LORABENCH = Path(sys.executable).with_name("lorabench")
STUDY = {"lr": 1e-4, "batch": 8, "r": 2, "alpha": 16, "dropout": 0.1, "warmup": 0.1, "max_grad_norm": 0.3,
         "weight_decay": 0.001, "max_length": 512}  # fmt: skip


def tokenized(tokenizer, frame) -> list[dict]:
    """Rows as the study's `datasets.map` produced them: truncated to MAX_LEN, padded later per batch."""
    encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=STUDY["max_length"])
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": int(label)}
        for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"], strict=True)
    ]


def study_process(data: str, rows: int, epochs: int, out_dir: str) -> dict:
    """The study's recipe in this process; returns its validation F1 and where the time went."""
    started = time.perf_counter()
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from lorabench.core.config import DataConfig, resolve_config
    from lorabench.data.sources import load_splits
    from lorabench.data.statistics import class_weights
    from lorabench.models.weights import resolve_source
    from speedbench.recipe import warmup_arguments  # the warm-up argument as this transformers release spells it

    # the same rows as lorabench: the study's split (datasets' train_test_split, seed 42), first `rows` rows
    splits = load_splits(DataConfig(source=data, max_train_rows=rows))
    source = resolve_source(resolve_config("minilm").model).source
    tokenizer = AutoTokenizer.from_pretrained(source)

    train, validation = tokenized(tokenizer, splits.train), tokenized(tokenizer, splits.validation)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=STUDY["r"], lora_alpha=STUDY["alpha"], lora_dropout=STUDY["dropout"]
    )
    model = get_peft_model(model, lora)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = torch.tensor(class_weights(splits.train["label"].to_numpy(), 2), dtype=torch.float32, device=device)

    def weighted_loss(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs["logits"].float(), labels, weight=weights)

    def f1(prediction):
        return {"f1": f1_score(prediction.label_ids, np.argmax(prediction.predictions, axis=-1))}

    arguments = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=STUDY["batch"],
        per_device_eval_batch_size=STUDY["batch"],
        num_train_epochs=epochs,
        learning_rate=STUDY["lr"],
        weight_decay=STUDY["weight_decay"],
        **warmup_arguments(STUDY["warmup"]),
        lr_scheduler_type="constant_with_warmup",
        max_grad_norm=STUDY["max_grad_norm"],
        gradient_checkpointing=True,
        fp16=device == "cuda",
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_loss_func=weighted_loss,
        compute_metrics=f1,
    )
    ready = time.perf_counter()
    trainer.train()
    finished = time.perf_counter()
    scores = [entry["eval_f1"] for entry in trainer.state.log_history if "eval_f1" in entry]
    return {
        "val_f1": round(scores[-1], 4),
        "setup_s": round(ready - started, 1),
        "train_and_eval_s": round(finished - ready, 1),
    }


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def lorabench_run(args, out: Path) -> dict:
    command = [str(LORABENCH), "-q", "train", "--model", "minilm", "--data", args.data, "--max-train-rows",
               str(args.rows), "--epochs", str(args.epochs), "--out", str(out)]  # fmt: skip
    seconds, _ = timed(command)
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(seconds, 1), "val_f1": round(summary["val"]["f1"], 4),
            "train_s": round(summary["train_seconds"], 1), "precision": summary.get("precision")}  # fmt: skip


def study_run(args, out: Path) -> dict:
    command = [sys.executable, str(Path(__file__)), "--side", "study", "--data", args.data, "--rows", str(args.rows),
               "--epochs", str(args.epochs), "--work", str(out)]  # fmt: skip
    seconds, stdout = timed(command)
    return {"wall_s": round(seconds, 1), **json.loads(stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", choices=["study"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "study":
        print(json.dumps(study_process(args.data, args.rows, args.epochs, args.work)))
        return
    runs = {"lorabench": [], "study": []}
    with tempfile.TemporaryDirectory() as work:
        for round_index in range(args.rounds):
            for side, run in (("lorabench", lorabench_run), ("study", study_run)):
                runs[side].append(run(args, Path(work) / f"{side}-{round_index}"))
                print(f"round {round_index + 1} {side:9s} {json.dumps(runs[side][-1])}", flush=True)
    median = {side: statistics.median(r["wall_s"] for r in results) for side, results in runs.items()}
    f1 = {side: statistics.mean(r["val_f1"] for r in results) for side, results in runs.items()}
    print(
        f"median wall: lorabench {median['lorabench']:.1f} s, study {median['study']:.1f} s -> "
        f"{median['study'] / median['lorabench']:.2f}x faster end to end; mean val F1: lorabench "
        f"{f1['lorabench']:.4f}, study {f1['study']:.4f} ({args.rows} rows, {args.epochs} epoch(s), {args.data})"
    )


if __name__ == "__main__":
    main()
