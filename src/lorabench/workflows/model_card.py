"""The README.md every export carries: a Hugging Face model card built from the run's own record.

The YAML front matter (base model, library, task, `model-index` results) is what the hub indexes; the body tells
a reader what the model was trained on, how, how well it did and how to load it. Every figure comes from the
run's config.yaml and summary.json, so the card cannot drift from the run it describes.
"""

from __future__ import annotations

import yaml

from lorabench.core.config import DataConfig, RunConfig
from lorabench.core.schemas import Metrics, RunSummary
from lorabench.models.registry import DEFAULT_KIND, Classifier, classifier_type
from lorabench.models.weights import PACKAGED_SOURCES

CARD_FILE = "README.md"
METRIC_NAMES = {"f1": "F1", "precision": "Precision", "recall": "Recall", "accuracy": "Accuracy"}
SPLIT_NAMES = {"validation": "val", "test": "test"}  # model-index split name -> RunSummary attribute
EXPORT_LIBRARIES = {"merged": "transformers", "onnx": "onnx"}  # the library that loads each export format
POOLING_NAMES = {
    "cls": "cls, the first token ([CLS] / <s>) through the model's own classification head",
    "last": "last, the last real token through the model's own classification head",
    "mean": "mean of the last hidden states over the real (non-pad) tokens, then the classification head without "
    "its own token-picking (BERT: no [CLS] pooler)",
    "": "the model's own classification head (its first token for encoders, the last for decoders)",
}


def model_card(config: RunConfig, summary: RunSummary, export_format: str) -> str:
    """The card for an export of `export_format` ("run", "merged" or "onnx") of the run recorded by config +
    summary."""
    front = yaml.safe_dump(front_matter(config, summary, export_format), sort_keys=False, allow_unicode=True)
    sections = [
        f"# {summary.model}: text classification\n\nTrained and exported with lorabench "
        f"({_kind(summary).kind}, {export_format} format).",
        _data_section(config, summary),
        _training_section(config, summary),
        _results_section(summary),
        _threshold_section(summary),
        _usage_section(config, summary, export_format),
        _limitations_section(config, summary),
    ]
    return f"---\n{front}---\n\n" + "\n\n".join(sections) + "\n"


def front_matter(config: RunConfig, summary: RunSummary, export_format: str) -> dict:
    """Hub metadata; results are one entry per scored split (split on the dataset, as the hub's schema has it)."""
    kind = _kind(summary)
    meta: dict = {}
    base = base_model(config)
    if base:
        meta["base_model"] = base
    # a merged export is a plain Transformers checkpoint, an ONNX one a graph; a run export loads through its kind's
    meta["library_name"] = EXPORT_LIBRARIES.get(export_format, kind.library_name)
    meta["pipeline_tag"] = "text-classification"
    meta["tags"] = ["lorabench", kind.kind, *(["peft"] if kind.adapts_a_base_model else []),
                    *(["onnx"] if export_format == "onnx" else []), "text-classification"]  # fmt: skip
    results = []

    def averaged(key: str) -> str:  # precision, recall and F1 of more than two classes are means over the classes
        return "macro " if len(summary.label_names) > 2 and key != "accuracy" else ""

    for split, metrics in _scored_splits(summary):
        results.append(
            {
                "task": {"type": "text-classification", "name": "Text Classification"},
                "dataset": {"name": config.data.source, "type": config.data.source, "split": split},
                "metrics": [
                    {
                        "type": key,
                        "value": value,
                        "name": f"{averaged(key)}{METRIC_NAMES[key]} ({split})",
                        "split": split,
                    }
                    for key, value in metrics.model_dump().items()
                ],
            }
        )
    meta["model-index"] = [{"name": summary.model, "results": results}]
    return meta


def base_model(config: RunConfig) -> str | None:
    """The base a loader can name: a hub id or path; a `package:` or `split-zip:` source is found only by lorabench."""
    source = config.model.source
    return None if not source or source.startswith(PACKAGED_SOURCES) else source


def _scored_splits(summary: RunSummary) -> list[tuple[str, Metrics]]:
    """(split, metrics) for validation and, when its labels were known, test."""
    return [(split, getattr(summary, attr)) for split, attr in SPLIT_NAMES.items() if getattr(summary, attr)]


def _data_section(config: RunConfig, summary: RunSummary) -> str:
    rows = ", ".join(f"{split} {count}" for split, count in summary.rows.items() if count)
    data = config.data
    lines = [
        "## Training data",
        "",
        f"- source: `{data.source}`" + (f", test file `{data.test}`" if data.test else ""),
        f"- texts from column `{data.text_column}`, labels from `{data.label_column}`; classes "
        + ", ".join(f"`{name}`" for name in summary.label_names),
        f"- rows: {rows} ({_split(data)}, seed {data.split_seed}"
        + (f"; training capped at {data.max_train_rows} rows" if data.max_train_rows else "")
        + ")",
    ]
    return "\n".join(lines)


def _split(data: DataConfig) -> str:
    if data.folds is None:
        return f"train/validation split {data.train_size:g}/{1 - data.train_size:g}"
    if data.fold is None:
        return f"{data.folds} stratified folds of all labelled rows, one run per fold, validation out-of-fold"
    return f"fold {data.fold} of {data.folds} stratified folds validates, the others train"


def _training_section(config: RunConfig, summary: RunSummary) -> str:
    lines = [
        "## Training",
        "",
        f"- kind: {_kind(summary).kind}; base: `{config.model.source}`",
        f"- epochs: {summary.epochs}, best epoch (by validation F1): {summary.best_epoch}",
    ]
    if summary.lr is not None:
        lines.append(
            f"- learning rate: {summary.lr:g} ({config.train.scheduler} after {config.train.warmup:g} warm-up)"
        )
    if _kind(summary).adapts_a_base_model:
        lora = config.lora
        targets = ", ".join(lora.target_modules) if lora.target_modules else "peft's default for the architecture"
        lines.append(f"- LoRA: r {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g}, targets: {targets}")
        lines.append(f"- max length: {config.train.max_length} tokens; truncated texts: {summary.truncated_texts}")
        lines.append(f"- pooling: {POOLING_NAMES.get(summary.pooling or '', POOLING_NAMES[''])}")
    lines += [
        f"- precision: {summary.precision}; device: {summary.device}; training time: {summary.train_seconds:g} s",
        f"- trainable parameters: {summary.trainable_params} of {summary.total_params} "
        f"({summary.trainable_percent:g}%)",
    ]
    if summary.versions:
        lines.append("- versions: " + ", ".join(f"{name} {version}" for name, version in summary.versions.items()))
    return "\n".join(lines)


def _results_section(summary: RunSummary) -> str:
    header = "| split | " + " | ".join(METRIC_NAMES.values()) + " |"
    lines = ["## Results", "", header, "|---" * (len(METRIC_NAMES) + 1) + "|"]
    for split, metrics in _scored_splits(summary):
        values = metrics.model_dump()
        lines.append(f"| {split} | " + " | ".join(f"{values[key]:.4f}" for key in METRIC_NAMES) + " |")
    averaging = "of the positive class" if len(summary.label_names) == 2 else "macro-averaged over the classes"
    lines += ["", f"Precision, recall and F1 are {averaging}; all are at the arg-max decision."]
    return "\n".join(lines)


def _threshold_section(summary: RunSummary) -> str:
    if summary.threshold is None:
        return "## Decision\n\nThe predicted class is the most probable one (arg-max); no threshold is tuned."
    positive = summary.label_names[1]
    return (
        f"## Decision threshold\n\nPredict `{positive}` when P(`{positive}`) >= **{summary.threshold}**, otherwise "
        f"`{summary.label_names[0]}`. The threshold is the one that maximises F1 on the validation split; "
        "`lorabench predict` and `serve` apply it. The metrics above are at the arg-max decision (0.5), so they "
        "compare with other models' arg-max figures."
    )


def _usage_section(config: RunConfig, summary: RunSummary, export_format: str) -> str:
    """Only the ways that load this export: lorabench for a run export, transformers for a merged one, and peft
    for a LoRA run's adapter."""
    parts = ["## How to use"]
    if export_format == "merged":
        parts.append(_merged_usage(config, summary))
        return "\n\n".join(parts)
    if export_format == "onnx":
        parts.append(
            "An ONNX graph (`onnx/model.onnx`: int64 `input_ids` and `attention_mask`, padded, to class "
            "`probabilities`; the pooling and the softmax are inside) with its tokenizer (`onnx/tokenizer.json`) and "
            "settings (`onnx/settings.json`: pad id, padding side, max length). lorabench runs it with onnxruntime "
            "(`pip install 'lorabench[onnx]'`), tokenizing as in training:\n\n```\n"
            "lorabench predict --run . --data texts.csv --out predictions.csv\n"
            'lorabench serve --run .          # POST /predict {"texts": [...]}\n```'
        )
        return "\n\n".join(parts)
    parts.append(
        "With lorabench (`pip install lorabench`), from this directory:\n\n```\n"
        "lorabench predict --run . --data texts.csv --out predictions.csv\n"
        'lorabench serve --run .          # POST /predict {"texts": [...]}\n```'
    )
    if _kind(summary).adapts_a_base_model:
        parts.append(_peft_usage(config, summary))
    return "\n\n".join(parts)


def _merged_usage(config: RunConfig, summary: RunSummary) -> str:
    decision = (
        f"labels = [model.config.id2label[int(p >= {summary.threshold})] for p in probabilities[:, 1].tolist()]"
        if summary.threshold is not None
        else "labels = [model.config.id2label[i] for i in probabilities.argmax(-1).tolist()]"
    )
    return (
        "A plain Transformers checkpoint (no peft, no lorabench):\n\n```python\nimport torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        'model = AutoModelForSequenceClassification.from_pretrained("path/to/this/directory").eval()\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")\n'
        f'batch = tokenizer(["a text", "another"], padding=True, truncation=True, '
        f'max_length={config.train.max_length}, return_tensors="pt")\n'
        "with torch.inference_mode():\n    probabilities = torch.softmax(model(**batch).logits, dim=-1)\n"
        f"{decision}\n```"
    )


def _peft_usage(config: RunConfig, summary: RunSummary) -> str:
    base = base_model(config) or f"<the base model's directory ({config.model.source})>"
    gguf = f', gguf_file="{config.model.gguf_file}"' if config.model.gguf_file else ""
    return (
        "With peft: the adapter and the classification head are in `adapter/`.\n\n```python\n"
        "from peft import PeftModel\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory/adapter")\n'
        f'base = AutoModelForSequenceClassification.from_pretrained("{base}", '
        f"num_labels={len(summary.label_names)}{gguf})\n"
        "base.config.pad_token_id = tokenizer.pad_token_id  # decoders ship without a pad token\n"
        'model = PeftModel.from_pretrained(base, "path/to/this/directory/adapter").eval()\n```'
    )


def _limitations_section(config: RunConfig, summary: RunSummary) -> str:
    lines = [
        "## Limitations",
        "",
        f"- trained and measured only on `{config.data.source}`; other text (domain, language, time) may score worse",
    ]
    if summary.test is None:
        lines.append("- the test split had no labels, so the figures above are validation figures only")
    if summary.truncated_texts:
        lines.append(f"- {summary.truncated_texts} texts were cut to {config.train.max_length} tokens in training")
    lines += [f"- data: {note}" for note in summary.notes]
    return "\n".join(lines)


def _kind(summary: RunSummary) -> type[Classifier]:
    return classifier_type(summary.kind or DEFAULT_KIND)
