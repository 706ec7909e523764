"""Stage 8: ship a finished run to another system.

Three forms: the run's model files as they are (a directory that `lorabench predict/serve --run` accepts, the
model files beside the config and summary); for kinds built on a pretrained model, the model merged into one
plain checkpoint (LoRA: peft's `merge_and_unload`, saved with its tokenizer and id2label) that
`AutoModelForSequenceClassification.from_pretrained` loads without lorabench or peft; or that merged model with
the run's pooling and a softmax (a probe run: its frozen encoder and head) as an ONNX graph (fp32 or int8), which
`predict` and `serve` run with onnxruntime (the `onnx` kind: the export holds the run's config and a summary naming
that kind). Each carries a README.md
model card (workflows/model_card.py) built from the run's record.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorabench.core.config import ExportFormat, Quantization, config_to_yaml
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import CHECKPOINT_DIR, CONFIG_FILE, RunDir, replace_dir, write_atomic, write_json
from lorabench.models.onnx import KIND as ONNX_KIND
from lorabench.models.registry import load_classifier
from lorabench.training.tracking import TRACKER_DIRS
from lorabench.workflows.model_card import CARD_FILE, model_card

EXPORT_INFO = "lorabench_export.json"
# Not part of the model: the resume state (optimizer moments) and tracking logs of the training run, and its
# per-row predictions on the training data's splits.
LEFT_OUT_DIRS = {CHECKPOINT_DIR, *TRACKER_DIRS.values()}
LEFT_OUT_SUFFIX = "_predictions.csv"


def export_run(
    run_dir: str | Path,
    out: str | Path,
    merge: bool = False,
    export_format: ExportFormat | None = None,
    quantize: Quantization = "none",
) -> dict:
    """Write the run's model to `out` (a new directory, or an earlier export that is replaced whole) in
    `export_format` (`merge` is the same as "merged"); `quantize` int8 applies to ONNX."""
    export_format = _chosen_format(merge, export_format, quantize)
    run = RunDir(run_dir)
    if not run.path.is_dir() or not run.file(CONFIG_FILE).is_file():
        raise LorabenchError(f"{run.path} is not a lorabench run directory (no {CONFIG_FILE})")
    config, summary = run.config(), run.summary()
    card = model_card(config, summary, export_format)
    out = Path(out)
    _check_out(out, run.path)
    info = {
        "format": export_format,
        "model": summary.model,
        "label_names": summary.label_names,
        "threshold": summary.threshold,
        "text_template": config.data.text_template,
        "best_epoch": summary.best_epoch,
        "val": summary.val.model_dump(),
        "test": summary.test.model_dump() if summary.test else None,
    }
    if export_format != "run":
        classifier = load_classifier(run.path)

        def build(directory: Path) -> None:
            if export_format == "merged":
                info.update(classifier.export_merged(directory))
            else:
                info.update(classifier.export_onnx(directory, quantize))
                # a run record of the onnx kind, so predict / serve / load_classifier take the export as a run
                write_atomic(directory / CONFIG_FILE, config_to_yaml(config))
                RunDir(directory).write_summary(summary.model_copy(update={"kind": ONNX_KIND}))
            _write_records(directory, info, card)
    else:

        def build(directory: Path) -> None:
            for entry in shipped_entries(run.path):
                if entry.is_dir():
                    shutil.copytree(entry, directory / entry.name, ignore=_left_out)
                else:
                    shutil.copy2(entry, directory / entry.name)
            _write_records(directory, info, card)

    out.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(build, out)
    return {
        "out": str(out),
        "format": info["format"],
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
    }


def _chosen_format(merge: bool, export_format: ExportFormat | None, quantize: Quantization) -> ExportFormat:
    """The format asked for: --format, or --merge (= merged), or the run's files; --quantize only with onnx."""
    if merge and export_format not in (None, "merged"):
        raise LorabenchError(f"--merge is --format merged; give one of --merge and --format {export_format}")
    chosen = export_format or ("merged" if merge else "run")
    if quantize != "none" and chosen != "onnx":
        raise LorabenchError(f"--quantize {quantize} applies to --format onnx, not --format {chosen}")
    return chosen


def _write_records(directory: Path, info: dict, card: str) -> None:
    """What every export holds beside the model: lorabench's export info and the model card."""
    write_json(directory / EXPORT_INFO, info)
    write_atomic(directory / CARD_FILE, card)


def shipped_entries(run_path: Path) -> list[Path]:
    """The files and folders of a run that an export without --merge copies."""
    return [entry for entry in sorted(run_path.iterdir()) if _shipped(entry.name)]


def _shipped(name: str) -> bool:
    """Whether an export copies a file or folder of this name, in the run or in a member run inside it."""
    return not (name.startswith(".") or name in LEFT_OUT_DIRS or name.endswith(LEFT_OUT_SUFFIX))


def _left_out(_directory: str, names: list[str]) -> list[str]:
    """copytree's `ignore`: an ensemble's member runs ship without their checkpoints, logs and predictions too."""
    return [name for name in names if not _shipped(name)]


def shipped_bytes(run_path: Path) -> int:
    """The size of what an export without --merge copies."""
    pending, size = list(shipped_entries(run_path)), 0
    while pending:
        entry = pending.pop()
        if entry.is_dir():
            pending.extend(child for child in entry.iterdir() if _shipped(child.name))
        elif entry.is_file():
            size += entry.stat().st_size
    return size


def _check_out(out: Path, run_path: Path) -> None:
    """Refuse to replace anything but an earlier export, and never write into the run itself."""
    if out.exists() and not out.is_dir():
        raise LorabenchError(f"--out exists and is not a directory: {out}")
    if out.resolve().is_relative_to(run_path.resolve()):
        raise LorabenchError("--out must lie outside the run directory")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise LorabenchError(f"--out {out} is a non-empty directory that holds no lorabench export; choose another")
