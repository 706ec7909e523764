"""Stage 4: LoRA fine-tuning with class-weighted cross-entropy, evaluated every epoch, best epoch by F1.

The loop is written out instead of using `transformers.Trainer` because the Trainer keeps the best model by a
single metric of its own evaluation loop and its samplers; here batches come from (seed, epoch) so a resumed
run is exact, the best epoch is chosen by validation F1, and the record is written atomically epoch by epoch.
"""

from __future__ import annotations

import math
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lorabench import distributed, record, ui
from lorabench.config import RunConfig
from lorabench.data import TextSplits, class_weights, load_splits
from lorabench.errors import LorabenchError
from lorabench.evaluate import (
    best_threshold,
    classification_metrics,
    predict_proba,
    predicted_labels,
    write_predictions,
)
from lorabench.model import (
    add_lora,
    load_base_model,
    load_trainable_state,
    parameter_counts,
    resolve_source,
    trainable_state,
)
from lorabench.packing import batch_logits, can_pack, choose_attention
from lorabench.plan import activation_bytes, free_memory_bytes
from lorabench.tokenization import MIN_STEPS_PER_EPOCH, Encoded, encode, epoch_batches, load_tokenizer, step_budget
from lorabench.tracking import make_tracker
from lorabench.ui import progress_bar, quiet_libraries, say


@dataclass
class Prepared:
    """Everything a training run needs before its first step, built and checked before any file is written."""

    config: RunConfig
    splits: TextSplits
    tokenizer: object
    model: object
    train: Encoded
    validation: Encoded
    test: Encoded | None


def choose_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device):
    """bf16 where the device runs it natively, else fp32; fp16 only when asked for (and only on CUDA)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "fp16" and device.type != "cuda":
        raise LorabenchError("--precision fp16 needs a CUDA GPU; use fp32 or bf16 on this machine")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def prepare(config: RunConfig) -> Prepared:
    """Load and check data, tokenizer and model; raises LorabenchError on bad input before touching the disk."""
    quiet_libraries()
    splits = load_splits(config.data)
    resolved = resolve_source(config.model)
    tokenizer = load_tokenizer(resolved.source, resolved.gguf_file, config.model.trust_remote_code)
    torch.manual_seed(config.train.seed)  # the head and LoRA initialisations
    base = load_base_model(resolved, config.model, splits.num_labels, splits.label_names, tokenizer.pad_token_id)
    model = add_lora(base, config.lora)
    choose_attention(model)
    if config.train.packing and not can_pack(model):
        raise LorabenchError(f"train.packing does not support {base.config.model_type} models; set it to false")
    max_length = config.train.max_length
    train = encode(tokenizer, splits.train["text"].tolist(), splits.train["label"].to_numpy(), max_length, "train")
    validation = encode(
        tokenizer, splits.validation["text"].tolist(), splits.validation["label"].to_numpy(), max_length, "validation"
    )
    test = None
    if splits.test is not None:
        test = encode(tokenizer, splits.test["text"].tolist(), splits.test["label"].to_numpy(), max_length, "test")
    for note in splits.notes:
        say(f"note: {note}")
    truncated = train.truncated + validation.truncated + (test.truncated if test else 0)
    if truncated:
        say(f"note: {truncated} texts longer than {max_length} tokens were truncated")
    return Prepared(config, splits, tokenizer, model, train, validation, test)


def peak_memory_mb(device: torch.device) -> float:
    """GPU peak on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def train(config: RunConfig, out_dir: str | Path, resume: bool = False, on_epoch_end=None) -> dict:
    """Fine-tune `config.model` on `config.data`, writing the run record to `out_dir`; returns the summary.

    `on_epoch_end(epoch, metrics_row)` is called after each validation (a sweep reports and prunes there).
    """
    current = distributed.world()
    if not current.is_main:
        ui.set_progress(False)  # one console: rank 0's
    run = record.RunDir(out_dir)
    # only rank 0 touches the record; a refusal there is raised on every process
    distributed.on_main(lambda: run.check(config, resume), current)  # before the slow loading
    prepared = prepare(config)
    can_resume = distributed.on_main(lambda: run.prepare(config, resume), current)
    return fit(prepared, run, can_resume, on_epoch_end)


def fit(prepared: Prepared, run: record.RunDir, can_resume: bool = False, on_epoch_end=None) -> dict:
    config, model, tokenizer = prepared.config, prepared.model, prepared.tokenizer
    settings = config.train
    current = distributed.world()
    if current.distributed and settings.packing:
        raise LorabenchError("train.packing does not run under several processes yet; set it to false")
    device = current.device()
    amp_dtype = autocast_dtype(settings.precision, device)
    quantized = config.model.quantize != "none"  # bitsandbytes already placed and typed the base weights
    if not quantized:
        model.to(device)
    if amp_dtype == torch.bfloat16 and device.type == "cuda" and not quantized:
        # the frozen base weights in bf16: half the memory and no cast per step; LoRA and the head stay fp32
        for param in model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(amp_dtype)
    lengths = prepared.train.lengths
    longest = int(lengths.max())
    # Each step trains one global batch of `processes` x the per-process budget, split across the processes.
    global_tokens = settings.batch_tokens * current.size or None
    global_rows = settings.batch_size * current.size
    used_tokens = step_budget(lengths, global_tokens) if global_tokens else None
    lr = settings.lr
    if used_tokens and used_tokens < global_tokens:
        note = (
            f"note: {int(lengths.sum()):,} training tokens: batches of {used_tokens} tokens instead of "
            f"{global_tokens} (at least {MIN_STEPS_PER_EPOCH} steps per epoch)"
        )
        if settings.scale_lr_with_batch:
            lr *= math.sqrt(used_tokens / global_tokens)
            note += f", lr scaled to {lr:.3g} (train.scale_lr_with_batch)"
        say(note)
    tokens_per_batch = max(settings.batch_tokens, longest) if settings.batch_tokens else settings.batch_size * longest
    checkpointing = settings.gradient_checkpointing
    if checkpointing == "auto":
        text_config = model.config.get_text_config()
        need = activation_bytes(
            text_config.hidden_size,
            text_config.num_attention_heads,
            text_config.num_hidden_layers,
            tokens_per_batch,
            longest,
            sixteen_bit=amp_dtype is not None,
            checkpointing=False,
        )
        checkpointing = need > 0.8 * free_memory_bytes(device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    counts = parameter_counts(model)
    say(
        f"{config.model.name}: {counts['trainable_params']:,} trainable of {counts['total_params']:,} parameters "
        f"({counts['trainable_percent']:.4f}%) on {device.type}, "
        f"precision {str(amp_dtype).removeprefix('torch.') if amp_dtype else 'fp32'}, "
        f"{model.config._attn_implementation} attention, "
        + (f"batches of {used_tokens} tokens" if used_tokens else f"batches of {global_rows} rows")
        + (f" split across {current.size} processes" if current.distributed else "")
        + (", packed" if settings.packing else "")
        + (", gradient checkpointing" if checkpointing else "")
    )

    weights = torch.tensor(class_weights(prepared.train.labels, prepared.splits.num_labels), dtype=torch.float32)
    # Summed here and divided by the whole (global) batch's weight below: the class-weighted mean of the
    # batch, split exactly across processes.
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(device), reduction="sum")
    trainable = [p for p in model.parameters() if p.requires_grad]
    trained_model = distributed.wrap(model, current)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(epoch_batches(lengths, global_rows, settings.seed, 1, global_tokens))
    total_steps = steps_per_epoch * settings.epochs
    from transformers import get_scheduler

    scheduler = get_scheduler(
        settings.scheduler if settings.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(settings.warmup * total_steps),
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    pad_id, side = tokenizer.pad_token_id, tokenizer.padding_side

    # "step" batches of epoch "epoch" + 1 are done when a mid-epoch checkpoint is resumed (0 otherwise).
    state = {
        "epoch": 0,
        "step": 0,
        "loss_sum": 0.0,
        "rows_seen": 0,
        "best_f1": -1.0,
        "best_epoch": 0,
        "train_seconds": 0.0,
    }
    if can_resume:
        state = {**state, **_restore_checkpoint(run, model, optimizer, scheduler, scaler, current)}
        say(
            f"resuming after epoch {state['epoch']}"
            + (f" step {state['step']}" if state["step"] else "")
            + f" of {settings.epochs}"
        )
    tracker = make_tracker(
        settings.tracking if current.is_main else "none", run.path, config.model_dump(mode="json"), run.path.name
    )

    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        done = state["step"]  # batches of this epoch already trained before a resume
        if not done:
            # dropout draws depend only on (seed, epoch) and, so that processes do not repeat each other's
            # masks, on the rank: rank 0 keeps the single-process seed; the offset stays within the low
            # 32 bits, all that torch's CPU generator uses
            torch.manual_seed(settings.seed * 1_000 + epoch + 1_000_003 * current.rank)
        model.train()
        started = time.perf_counter()
        loss_sum, rows_seen = state["loss_sum"], state["rows_seen"]
        batches = epoch_batches(lengths, global_rows, settings.seed, epoch, global_tokens)
        with progress_bar(f"epoch {epoch}/{settings.epochs}", len(batches)) as bar:
            bar.advance(done)
            for step, rows in enumerate(batches[done:], start=done + 1):
                mine = current.shard(rows)
                # a process left without rows (a batch smaller than the launch) joins the step with weight 0
                share = 1.0 if len(mine) else 0.0
                mine = mine if len(mine) else rows[:1]
                sequences = [prepared.train.input_ids[i] for i in mine]
                labels = torch.from_numpy(prepared.train.labels[mine]).to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = batch_logits(trained_model, sequences, pad_id, side, device, settings.packing)
                batch_weight = weights[prepared.train.labels[rows]].sum().item()
                loss = share * loss_fn(logits.float(), labels) / batch_weight  # this process's part of the mean
                batch_loss = distributed.sum_all(loss.item(), current)  # the same on every process
                if not math.isfinite(batch_loss):
                    raise LorabenchError(f"training diverged at epoch {epoch} (loss {batch_loss}); lower --lr")
                # DDP averages gradients over the processes; scaling by their number makes that a sum
                scaler.scale(loss * current.size).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += batch_loss * len(rows)
                rows_seen += len(rows)
                bar.advance(1, info=f"loss {loss_sum / rows_seen:.4f}")
                every = settings.save_every_steps
                if every and step < len(batches) and ((epoch - 1) * steps_per_epoch + step) % every == 0:
                    _save_checkpoint(
                        run,
                        model,
                        optimizer,
                        scheduler,
                        scaler,
                        {
                            **state,
                            "step": step,
                            "loss_sum": loss_sum,
                            "rows_seen": rows_seen,
                            "train_seconds": state["train_seconds"] + time.perf_counter() - started,
                        },
                        current,
                    )
        state.update(
            step=0, loss_sum=0.0, rows_seen=0, train_seconds=state["train_seconds"] + time.perf_counter() - started
        )

        # each process scores every N-th validation row; the metrics are computed over all of them
        shown = current.shard(np.arange(len(prepared.validation)))
        probabilities = distributed.gather_rows(
            predict_proba(
                model,
                prepared.validation.subset(shown),
                settings.eval_batch_size,
                device,
                amp_dtype,
                pad_id,
                side,
                f"validate epoch {epoch}",
                settings.packing,
            ),
            shown,
            len(prepared.validation),
            current,
        )
        val = classification_metrics(
            prepared.validation.labels, predicted_labels(probabilities), prepared.splits.num_labels
        )
        row = {
            "epoch": epoch,
            "train_loss": round(loss_sum / rows_seen, 6),
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": round(state["train_seconds"], 2),
        }
        tracker.log(row, step=epoch * steps_per_epoch)
        say(
            f"epoch {epoch}: train loss {row['train_loss']:.4f}, val F1 {val['f1']:.4f}, accuracy {val['accuracy']:.4f}"
        )
        improved = val["f1"] > state["best_f1"]
        if improved:
            state["best_f1"], state["best_epoch"] = val["f1"], epoch
        state["epoch"] = epoch
        if current.is_main:
            run.append_metrics(row)
            if improved:
                record.replace_dir(lambda tmp: _save_adapter(model, tokenizer, tmp), run.file(record.ADAPTER_DIR))
        _save_checkpoint(run, model, optimizer, scheduler, scaler, state, current)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    # rank 0 scores the best epoch and writes the summary; every process returns it
    # N processes train one global batch per step: N x the per-process budget (tokens, or rows)
    batch = {"tokens": used_tokens} if used_tokens else {"rows": global_rows}
    summary = distributed.on_main(lambda: _finish(prepared, run, state, counts, device, amp_dtype, lr, batch), current)
    tracker.finish(summary)
    return summary


def _save_adapter(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def _save_checkpoint(
    run: record.RunDir, model, optimizer, scheduler, scaler, state: dict, current: distributed.World
) -> None:
    """Everything the loop needs to continue exactly: weights, optimizer, schedule, loss scale, every process's
    random state (dropout mid-epoch; each process drew for its own rows) and `state` (epoch, step, loss sums,
    best epoch), swapped in as one directory by rank 0. Called on every process."""
    random_states = distributed.gather_all(
        {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        current,
    )
    if not current.is_main:
        return

    def build(directory: Path) -> None:
        torch.save(
            {
                "trainable": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": random_states,
            },
            directory / "state.pt",
        )
        record.write_json(directory / "progress.json", {**state, "processes": current.size})

    record.replace_dir(build, run.file(record.CHECKPOINT_DIR))


def _restore_checkpoint(run: record.RunDir, model, optimizer, scheduler, scaler, current: distributed.World) -> dict:
    directory = run.file(record.CHECKPOINT_DIR)
    try:
        saved = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
        state = record.read_json(directory / "progress.json")
    except Exception as err:
        raise LorabenchError(f"cannot resume from {directory}: {str(err).splitlines()[0]}") from None
    processes = state.pop("processes", 1)
    if processes != current.size:
        # the global batch is the per-process budget x the processes: another count would change every batch
        raise LorabenchError(
            f"resume this run with the launch that trained it: {processes} "
            f"process{'es' if processes > 1 else ''}, not {current.size}"
        )
    load_trainable_state(model, saved["trainable"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    mine = saved["rng"][current.rank]
    torch.set_rng_state(mine["cpu"])
    if mine["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["cuda"])
    return state


def _finish(
    prepared: Prepared,
    run: record.RunDir,
    state: dict,
    counts: dict,
    device,
    amp_dtype,
    lr: float,
    effective_batch: dict,
) -> dict:
    """Reload the best epoch's weights, score validation and test with them, and write the summary."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model, settings = prepared.model, prepared.config.train
    adapter = load_file(run.file(record.ADAPTER_DIR) / "adapter_model.safetensors")
    set_peft_model_state_dict(model, adapter)
    pad_id, side = prepared.tokenizer.pad_token_id, prepared.tokenizer.padding_side
    names = prepared.splits.label_names
    results, threshold = {}, None
    for split_name, encoded, frame in (
        ("val", prepared.validation, prepared.splits.validation),
        ("test", prepared.test, prepared.splits.test),
    ):
        if encoded is None:
            results[split_name] = None
            continue
        probabilities = predict_proba(
            model,
            encoded,
            settings.eval_batch_size,
            device,
            amp_dtype,
            pad_id,
            side,
            f"score {split_name}",
            settings.packing,
        )
        if split_name == "val" and len(names) == 2:
            threshold = round(best_threshold(encoded.labels, probabilities[:, 1]), 6)
        predictions = predicted_labels(probabilities)
        write_predictions(run.file(f"{split_name}_predictions.csv"), frame, probabilities, names)
        labelled = bool((encoded.labels >= 0).all())
        results[split_name] = classification_metrics(encoded.labels, predictions, len(names)) if labelled else None

    summary = {
        "model": prepared.config.model.name,
        "model_source": prepared.config.model.source,
        "best_epoch": state["best_epoch"],
        "epochs": settings.epochs,
        "val": results["val"],
        "test": results["test"],
        "train_seconds": round(state["train_seconds"], 2),
        "peak_memory_mb": peak_memory_mb(device),
        **counts,
        "label_names": names,
        # The F1-maximising threshold on P(positive) found on validation; predict/serve use it. Metrics above
        # are at the arg-max (0.5) decision, so they compare fairly with the study.
        "threshold": threshold,
        "rows": {
            "train": len(prepared.train),
            "validation": len(prepared.validation),
            "test": len(prepared.test) if prepared.test is not None else 0,
        },
        "truncated_texts": prepared.train.truncated
        + prepared.validation.truncated
        + (prepared.test.truncated if prepared.test is not None else 0),
        "class_weights": [round(float(w), 6) for w in class_weights(prepared.train.labels, len(names))],
        "device": device.type,
        "processes": distributed.world().size,
        "effective_batch": effective_batch,
        "lr": lr,  # train.lr, or scaled with a smaller batch (train.scale_lr_with_batch)
        "precision": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32",
        "versions": _versions(),
        "notes": prepared.splits.notes,
    }
    record.write_json(run.file(record.SUMMARY_FILE), summary)
    say(f"best epoch {state['best_epoch']}: val F1 {results['val']['f1']:.4f}; record in {run.path}")
    return summary


def _versions() -> dict:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "machine": platform.machine(),
    }
