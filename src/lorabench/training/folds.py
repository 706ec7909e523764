"""`train --folds K`: one run per stratified fold of every labelled row, recorded together as one averaging run.

Each fold's run is a normal run of the configured kind in RUN/members/fold-<i>/ whose config says `data.fold: i`:
it trains on the other folds and is validated on fold i, so best epoch, threshold and `train.patience` work per
fold, and `train --config RUN/members/fold-<i>/config.yaml` repeats it alone. The whole run's validation is
out-of-fold: every labelled row scored once, by the run that did not train on it (oof_predictions.csv, and the
summary's val metrics with bootstrap intervals); its model averages the K runs with equal weights, for predict,
serve and the test predictions. `--resume` keeps the folds that finished and continues the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lorabench.core.config import RunConfig
from lorabench.core.console import say
from lorabench.core.errors import LorabenchError, stage
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import SUMMARY_FILE, RunDir
from lorabench.data.sources import TextSplits, load_splits
from lorabench.models import ensemble
from lorabench.training import distributed
from lorabench.training.averaging import member_probabilities, record_ensemble, write_oof

Trainer = Callable[..., RunSummary]


def fold_config(config: RunConfig, fold: int) -> RunConfig:
    """The config of one fold's run: the same settings, validated on `fold`."""
    return config.model_copy(update={"data": config.data.model_copy(update={"fold": fold})})


def train_folds(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    *,
    trainer: Trainer,
) -> RunSummary:
    """Train every fold with `trainer` (the kind's own) into RUN/members/fold-<i>/, then record the average."""
    if on_epoch_end is not None:
        raise LorabenchError("a sweep trial trains one split; leave data.folds unset in sweeps")
    current = distributed.world()
    run = RunDir(out_dir)
    distributed.on_main(lambda: run.check(config, resume), current)  # before any work
    with stage("loading the data", config.model.name):
        splits = load_splits(config.data)  # every labelled row, with the fold that holds it out
    distributed.on_main(lambda: run.prepare(config, resume), current)
    members = {f"fold-{fold}": run.file(ensemble.MODEL_DIR) / f"fold-{fold}" for fold in range(config.data.folds)}
    for fold, (name, member) in enumerate(members.items()):
        if resume and (member / SUMMARY_FILE).is_file():
            say(f"{name}: finished earlier, kept")
            continue
        say(f"{name} ({fold + 1} of {len(members)}): validated on {int((splits.folds == fold).sum())} rows")
        trainer(fold_config(config, fold), member, resume=resume)
    with stage("averaging the folds", config.model.name):
        return distributed.on_main(lambda: _record(run, config, splits, members), current)


def _record(run: RunDir, config: RunConfig, splits: TextSplits, members: dict[str, Path]) -> RunSummary:
    """Out-of-fold validation from each fold run's predictions, equal weights, and the averaging run's record."""
    names = splits.label_names
    out_of_fold = np.empty((len(splits.validation), len(names)))
    for fold, member in enumerate(members.values()):
        held_out = splits.folds == fold
        out_of_fold[held_out] = member_probabilities(member, "val", splits.validation[held_out], names)
    note = (
        f"validation is out-of-fold: each of the {len(splits.validation)} labelled rows scored by the one of "
        f"{len(members)} fold runs that did not train on it; the model averages the {len(members)} runs"
    )
    splits = dataclasses.replace(splits, notes=[*splits.notes, note])
    weights = np.full(len(members), 1 / len(members))
    summary = record_ensemble(run, splits, members, weights, out_of_fold, config.model.name, config.model.source)
    write_oof(run, splits, out_of_fold)
    return summary
