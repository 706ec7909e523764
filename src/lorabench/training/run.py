"""`train`: the trainer of the kind a run config names, and nothing else to choose.

A new kind adds its recipe to TRAINERS (and its classifier to lorabench.models.registry).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from lorabench.core.config import RunConfig
from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import restored_on_failure, writing
from lorabench.models import lora, probe, prompt, setfit, tfidf
from lorabench.models.registry import classifier_type
from lorabench.training.distributed import world
from lorabench.training.folds import train_folds
from lorabench.training.lora_recipe import train_lora
from lorabench.training.probe_recipe import train_probe
from lorabench.training.prompt_recipe import train_prompt
from lorabench.training.tfidf_recipe import train_tfidf

Trainer = Callable[..., RunSummary]
TRAINERS: dict[str, Trainer] = {
    lora.KIND: train_lora,
    lora.FULL_KIND: train_lora,
    probe.KIND: train_probe,
    setfit.KIND: train_probe,
    prompt.KIND: train_prompt,
    tfidf.KIND: train_tfidf,
}


def trainer_for(config: RunConfig) -> Trainer:
    """The kind's trainer; with `data.folds` (and no single `data.fold`) it trains every fold and averages them."""
    kind = classifier_type(config.kind).kind  # refuses an unknown kind in one line
    if kind not in TRAINERS:
        raise LorabenchError(f"model kind '{kind}' cannot be trained directly")
    if config.data.folds is not None and config.data.fold is None:
        return functools.partial(train_folds, trainer=TRAINERS[kind])
    return TRAINERS[kind]


def train(config: RunConfig, out_dir: str | Path, resume: bool = False) -> RunSummary:
    """Train `config.model` on `config.data` and write its run record to `out_dir`; returns the summary.

    A failure leaves `out_dir` as it was before (rank 0 restores it; every process raises). Rank 0 holds the
    directory's lock throughout, so a second command writing there is refused.
    """
    trainer = trainer_for(config)
    if not world().is_main:
        return trainer(config, out_dir, resume=resume)
    with writing(Path(out_dir)), restored_on_failure(Path(out_dir)):
        return trainer(config, out_dir, resume=resume)


def train_trial(
    config: RunConfig,
    out_dir: str | Path,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    resume: bool = False,
) -> RunSummary:
    """A sweep's trial: `on_epoch_end(epoch, metrics_row)` is called after each validation (the sweep reports and
    prunes there), and a pruned or failed trial keeps what it wrote, for the sweep's report and for `resume`. The
    trial's directory is locked while it trains (workers sharing a sweep never write one trial twice)."""
    trainer = trainer_for(config)
    if not world().is_main:
        return trainer(config, out_dir, resume=resume, on_epoch_end=on_epoch_end)
    with writing(Path(out_dir)):
        return trainer(config, out_dir, resume=resume, on_epoch_end=on_epoch_end)
