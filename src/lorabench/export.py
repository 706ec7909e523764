"""Stage 8: ship a finished run to another system.

Two forms: the run's model files as they are (a directory that `lorabench predict/serve --run` accepts, the
LoRA adapter + head beside the config naming the base), or - for LoRA runs - the adapter merged into the base
weights with peft's `merge_and_unload`, saved as a plain Transformers checkpoint (safetensors + tokenizer +
id2label) that `AutoModelForSequenceClassification.from_pretrained` loads without lorabench or peft.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lorabench import record
from lorabench.errors import LorabenchError

EXPORT_INFO = "lorabench_export.json"
# Not part of the model: the resume state (optimizer moments) and tracking logs of the training run, and its
# per-row predictions on the training data's splits.
LEFT_OUT_DIRS = {record.CHECKPOINT_DIR, "wandb"}
LEFT_OUT_SUFFIX = "_predictions.csv"


def export_run(run_dir: str | Path, out: str | Path, merge: bool = False) -> dict:
    """Write the run's model to `out` (a new directory, or an earlier export that is replaced whole)."""
    from lorabench.predict import LoraClassifier, run_model_name

    run = record.RunDir(run_dir)
    if not run.path.is_dir() or not run.file(record.CONFIG_FILE).is_file():
        raise LorabenchError(f"{run.path} is not a lorabench run directory (no {record.CONFIG_FILE})")
    summary = run.summary()
    out = Path(out)
    _check_out(out, run.path)
    info = {
        "format": "merged" if merge else "run",
        "model": summary.get("model"),
        "label_names": summary.get("label_names"),
        "threshold": summary.get("threshold"),
        "best_epoch": summary.get("best_epoch"),
        "val": summary.get("val"),
        "test": summary.get("test"),
    }
    if merge:
        if run_model_name(run.path) == "tfidf":
            raise LorabenchError(
                "export --merge applies to LoRA runs; a TF-IDF run has no base weights to merge "
                "into (export it without --merge)"
            )
        classifier = LoraClassifier(run.path)
        merged = classifier.model.merge_and_unload(safe_merge=True).to("cpu")
        _drop_dequantized_gguf_marker(merged)
        info["max_length"] = classifier.max_length
        info["usage"] = (
            "two classes: predict label_names[1] when P(label_names[1]) >= threshold; "
            "otherwise the arg-max class (config.json id2label)"
        )

        def build(directory: Path) -> None:
            merged.save_pretrained(directory, safe_serialization=True)
            classifier.tokenizer.save_pretrained(directory)
            record.write_json(directory / EXPORT_INFO, info)
    else:

        def build(directory: Path) -> None:
            for entry in sorted(run.path.iterdir()):
                if entry.name.startswith(".") or entry.name in LEFT_OUT_DIRS or entry.name.endswith(LEFT_OUT_SUFFIX):
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, directory / entry.name)
                else:
                    shutil.copy2(entry, directory / entry.name)
            record.write_json(directory / EXPORT_INFO, info)

    out.parent.mkdir(parents=True, exist_ok=True)
    record.replace_dir(build, out)
    return {
        "out": str(out),
        "format": info["format"],
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
    }


def _drop_dequantized_gguf_marker(model) -> None:
    """A GGUF base (smollm2) is loaded de-quantized into plain fp32 layers, but transformers keeps its GGUF
    quantizer on the model and then refuses to save it; without the marker it saves as an ordinary checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if quantizer.quantization_config.quant_method != "gguf" or getattr(quantizer, "packed_modules", None):
        raise LorabenchError("export --merge needs a base with plain (de-quantized) weights; this one is quantized")
    model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _check_out(out: Path, run_path: Path) -> None:
    """Refuse to replace anything but an earlier export, and never write into the run itself."""
    if out.exists() and not out.is_dir():
        raise LorabenchError(f"--out exists and is not a directory: {out}")
    if out.resolve().is_relative_to(run_path.resolve()):
        raise LorabenchError("--out must lie outside the run directory")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise LorabenchError(f"--out {out} is a non-empty directory that holds no lorabench export; choose another")
