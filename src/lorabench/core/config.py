"""Validated run configuration: presets (YAML files) < a user's config file < command-line flags.

Every section forbids unknown keys so a typo in a config file is named instead of silently ignored. The sweep's
settings and export's choices are here too: the CLI builds every flag from this module alone, without importing
torch or the other stacks behind the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from lorabench.core.errors import LorabenchError, first_line

PRESET_DIR = Path(__file__).parents[1] / "presets"
DEFAULT_DATA = "mehdiiraqui/twitter_disaster"
# local: the run record alone (metrics.jsonl, summary.json), which every run writes anyway
TrackerName = Literal["none", "local", "wandb", "mlflow", "tensorboard"]


def _split_commas(value: Any) -> Any:
    """`--tracking mlflow,tensorboard` and a config's `tracking: local` are both one string."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _distinct_trackers(names: list[str]) -> list[str]:
    if "none" in names and len(names) > 1:
        raise ValueError("'none' cannot be combined with other trackers")
    if not names:
        raise ValueError("name at least one tracker, or 'none'")
    return list(dict.fromkeys(names))


# The marker cli.py looks for: a list field carrying it gets one flag taking a comma-separated list.
COMMA_SEPARATED = BeforeValidator(_split_commas)
Trackers = Annotated[list[TrackerName], COMMA_SEPARATED, AfterValidator(_distinct_trackers)]


Method = Literal["lora", "dora", "rslora", "pissa", "loraplus", "full", "probe", "setfit", "prompt"]
# The classifier kind (lorabench.models.registry) each method trains: the LoRA variants all save a peft adapter.
METHOD_KINDS: dict[str, str] = {"lora": "lora", "dora": "lora", "rslora": "lora", "pissa": "lora",
                                "loraplus": "lora", "full": "full", "probe": "probe", "setfit": "setfit",
                                "prompt": "prompt"}  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("minilm", description="preset name, local model directory or hub id")
    # The kind of classifier (lorabench.models): LoRA on a pretrained model unless a preset says otherwise.
    kind: str = Field("lora", description="classifier kind: lora, or a preset's own (see `lorabench presets`)")
    source: str = Field(
        "", description="what to load: a directory, a hub id, package:MODULE/SUBDIR or split-zip:... (see presets)"
    )
    # How a pretrained model becomes a classifier (docs: methods). The LoRA variants are peft's own options on the
    # same adapter; `full` trains every weight; `probe` fits a logistic regression on the frozen model's pooled
    # embeddings. A kind without a pretrained model (tfidf) takes none.
    method: Method | None = Field(
        None,
        description="lora (default for a pretrained model), dora, rslora, pissa, loraplus (LoRA variants), full "
        "(every weight trains), probe (frozen embeddings + logistic regression), setfit (the encoder tuned on "
        "pairs of texts first, SetFit) or prompt (a decoder answers a prompt, no training; see the prompt section)",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside the model directory")
    trust_remote_code: bool = Field(False, description="allow a model's own Python code")
    allow_pickle: bool = Field(False, description="allow pickle (.bin) weights")
    quantize: Literal["none", "4bit", "8bit"] = Field("none", description="bitsandbytes QLoRA; CUDA only")
    # auto: decoders pool their last token; an encoder trained for mean pooling (a sentence-transformers folder's
    # 1_Pooling/config.json says so) the mean of its tokens; other encoders their head's own [CLS] / <s>. The run
    # records the resolved choice (summary.json `pooling`), and predict / serve / export use it.
    pooling: Literal["auto", "cls", "mean", "last"] = Field(
        "auto", description="what the head sees: auto, cls (first token), mean (of the real tokens), last token"
    )
    config_overrides: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="set on the architecture's config when loading, e.g. hidden_dropout_prob"
    )

    @model_validator(mode="after")
    def _method_fits_the_kind(self) -> ModelConfig:
        if self.method is not None and self.kind != "lora":
            raise ValueError(f"method {self.method} needs a pretrained model; the {self.kind} kind has no methods")
        return self


class DataConfig(_Section):
    source: str = Field(
        DEFAULT_DATA,
        description="hub data set id, a directory with train/test files, or one CSV / Parquet / JSONL file",
    )
    test: str | None = Field(None, description="a test file (labels optional)")
    text_column: str = Field("text", description="column holding the texts")
    # e.g. "{keyword}: {text}": the model then sees the keyword too; predict and serve build texts the same way
    # from the run's config (lorabench.data.texts.template_texts).
    text_template: str | None = Field(
        None, description="build each text from columns, e.g. '{keyword}: {text}' (missing values are empty)"
    )
    label_column: str = Field("target", description="column holding the labels")
    id_column: str = Field("id", description="column naming the rows in prediction files")
    train_size: float = Field(0.8, gt=0, lt=1, description="training share of the train/validation split")
    split_seed: int = Field(42, description="seed of the train/validation split (the study's: 42)")
    max_train_rows: int | None = Field(None, gt=0, description="train on the first N training rows only")
    strict: bool = Field(False, description="refuse empty texts instead of skipping them")
    # keep: the study's row split, which puts copies of one tweet on both sides (189 validation rows of the
    # disaster tweets have a near duplicate in train); group: no normalised text on both sides.
    duplicates: Literal["keep", "group"] = Field(
        "keep", description="keep: split rows at random; group: keep near duplicates on one side of the split"
    )
    conflicts: Literal["keep", "majority", "drop"] = Field(
        "keep", description="texts labelled both ways, before splitting: keep, relabel to the majority, or drop"
    )
    # K folds over every labelled row (train and validation together): `train` then trains one run per fold, each
    # validated on its held-out fold, and averages them (lorabench.training.folds); `fold` picks one fold's split.
    folds: int | None = Field(
        None,
        ge=2,
        description="train K runs on stratified folds of all labelled rows and average them; None = one split",
    )
    fold: int | None = Field(None, ge=0, description="with folds: validate on this fold (0-based), train on the others")
    # Scoring only: training still sees each text's first train.max_length tokens, and the per-epoch validation
    # that picks the best epoch is truncated too; the final scores of validation and test, predict and serve use it.
    long_texts: Literal["truncate", "windows"] = Field(
        "truncate",
        description="texts longer than train.max_length when scoring (lora kind): truncate keeps the first tokens; "
        "windows scores overlapping windows (half a window apart) and averages their probabilities, costing about "
        "2x the tokens beyond the first window",
    )

    @model_validator(mode="after")
    def _fold_within_folds(self) -> DataConfig:
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise ValueError(f"data.fold {self.fold} needs data.folds greater than it (folds: {self.folds})")
        return self

    @model_validator(mode="after")
    def _texts_are_not_the_labels(self) -> DataConfig:
        if self.text_column == self.label_column:  # the model would be handed its answer
            raise ValueError(f"data.text_column and data.label_column are both {self.text_column!r}")
        return self


# The settings naming the user's columns: every command that reads data takes them as flags (cli.data_options);
# predict defaults to the run's own.
DATA_COLUMNS = ("text_column", "text_template", "label_column", "id_column")


class LoraSettings(_Section):
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(16, gt=0, description="LoRA scaling alpha")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA input")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases train")
    target_modules: list[str] | None = Field(None, description="layers to adapt; None = peft's default")


def _names_as_text(words: Any) -> Any:
    """Class names are matched as text: YAML's `{0: no, 1: yes}` has integer keys."""
    return {str(name): word for name, word in words.items()} if isinstance(words, dict) else words


class PromptSettings(_Section):
    """`model.method: prompt`: a decoder scores each class by the log-probability of its label word after the
    prompt; the decoder never trains, only an offset per class that evens out its taste for some words."""

    template: str = Field(
        "Text: {text}\nAnswer:", description="the prompt for one text; {text} stands for it; the label word follows"
    )
    label_words: Annotated[dict[str, str] | None, BeforeValidator(_names_as_text)] = Field(
        None, description="each class's answer word by class name, e.g. {0: no, 1: yes}; None = the class names"
    )
    shots: int = Field(
        0, ge=0, description="labelled training examples per class put before each text (seeded; training rows only)"
    )
    calibration_rows: int = Field(
        512, ge=0, description="training rows (not shots) that fit one offset per class to the scores; 0 = none"
    )

    @model_validator(mode="after")
    def _template_takes_the_text(self) -> PromptSettings:
        if "{text}" not in self.template:
            raise ValueError("prompt.template must hold {text}, where each text goes")
        return self


class TrainSettings(_Section):
    epochs: int = Field(5, gt=0, description="passes over the training rows")
    batch_size: int = Field(8, gt=0, description="rows per training batch when batch_tokens is 0")
    # Training batches hold up to `batch_tokens` padded tokens (rows x longest row) of length-sorted rows, so
    # short texts share a batch with many others and padding is nearly nil. 2048 (about 60 tweets): on 2 CPU
    # cores minilm trains an epoch 3.8x faster than the study's recipe (8 random rows, checkpointing) at the
    # same validation F1, and a GPU gets batches large enough to keep it busy (bench/README.md); small data
    # sets get smaller batches (tokenization.MIN_STEPS_PER_EPOCH). 0 = the study's `batch_size` random rows.
    batch_tokens: int = Field(
        2048, ge=0, description="padded tokens per batch of length-sorted rows; 0 = batch_size random rows"
    )
    packing: bool = Field(False, description="padding-free batches; pays only with a varlen attention kernel")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    # Every weight moving at LoRA's lr forgets the pretrained model; 2e-5 is BERT's and RoBERTa's fine-tuning lr.
    full_lr: float = Field(2e-5, gt=0, description="peak lr when model.method is full or setfit (every weight trains)")
    setfit_pairs: int = Field(5, gt=0, description="setfit: text pairs drawn per training text and epoch")
    # lr is tuned for batches of `lr_batch_tokens`; when the batch actually trained is smaller (small data lowers
    # the budget to keep 50 steps an epoch, or a smaller batch_tokens), lr is multiplied by
    # sqrt(trained / lr_batch_tokens), Adam's square-root rule: the preset minilm lr on 5-tweet batches collapsed to
    # one class (bench/results/lr_scaling_small_data.json). It depends on the global batch alone, so one process and N
    # processes training the same batches train them with the same lr.
    scale_lr_with_batch: bool = Field(True, description="scale lr with the square root of a smaller batch")
    lr_batch_tokens: int = Field(2048, gt=0, description="the global batch (tokens) that lr is tuned for")
    weight_decay: float = Field(0.001, ge=0, description="AdamW weight decay")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of all optimizer steps spent warming up")
    scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="lr after the warm-up")
    max_grad_norm: float = Field(0.3, gt=0, description="gradient clipping norm")
    max_length: int = Field(512, gt=1, description="tokens kept per text")
    eval_batch_size: int = Field(64, gt=0, description="rows per scoring batch")
    seed: int = Field(0, description="head and LoRA init, batch order and dropout")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="auto: bf16 where the GPU or CPU computes it natively (on a CPU for training only), else fp32; "
        "SetFit's tuning stays fp32 under auto",
    )
    # auto: only when one batch's estimated activations would not fit in the free memory (it costs a forward)
    gradient_checkpointing: bool | Literal["auto"] = Field("auto", description="recompute activations in backward")
    tracking: Trackers = Field(
        default_factory=lambda: ["local"],
        description=f"where metrics go beyond the run record, comma-separated: {', '.join(get_args(TrackerName))}",
    )
    save_every_steps: int | None = Field(None, gt=0, description="also checkpoint every N optimizer steps, mid-epoch")
    # Early stopping: the best epoch's adapter is kept either way; patience only saves the epochs after it.
    patience: int | None = Field(
        None, gt=0, description="stop after N epochs without a better validation F1; None = train every epoch"
    )


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraSettings = LoraSettings()
    prompt: PromptSettings = PromptSettings()
    train: TrainSettings = TrainSettings()

    @property
    def kind(self) -> str:
        """The classifier kind this run trains: the preset's (tfidf), else the one its method trains."""
        return METHOD_KINDS[self.model.method or "lora"] if self.model.kind == "lora" else self.model.kind

    @property
    def method(self) -> str | None:
        """The method trained with; None for a kind without a pretrained model."""
        return (self.model.method or "lora") if self.model.kind == "lora" else None


# The choices of `lorabench export` (lorabench.workflows.export).
ExportFormat = Literal["run", "merged", "onnx"]
Quantization = Literal["none", "int8"]


class SweepSettings(BaseModel):
    """What `lorabench sweep` was asked to do; None means the preset's value."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="preset name, local model directory or hub id")
    data: str | None = Field(None, description="hub data set id, a directory with train/test files, or one file")
    # the data's column settings (config.DATA_COLUMNS) by key, e.g. {"label_column": "topic"}; every trial shares them
    columns: dict[str, str] = Field(default_factory=dict, description="the data's columns and text template")
    out: Path = Field(description="sweep directory: trials, database, report (rerun to resume)")
    trials: int = Field(30, gt=0, description="finished (complete or pruned) trials wanted; the study ran 30")
    backend: Literal["optuna", "wandb", "ray"] = Field(
        "optuna", description="optuna: embedded; wandb: W&B sweep; ray: Ray Tune"
    )
    space: Path | None = Field(None, description="search-space YAML; None = the study's")
    storage: str | None = Field(None, description="Optuna storage URL; None = sqlite:///OUT/study.db")
    # A worker that stops beating (killed, its machine gone) has its trial failed and queued again by whichever
    # worker checks next, after a grace of 3 intervals. Each beat is a write to the storage.
    heartbeat_seconds: int = Field(
        60, gt=0, description="how often a running trial tells the storage its worker is alive (optuna backend)"
    )
    epochs: int | None = Field(None, gt=0, description="epochs per trial (default: the preset's)")
    max_train_rows: int | None = Field(None, gt=0, description="train each trial on the first N rows only")
    prune: bool = Field(True, description="stop hopeless trials after an epoch")
    seed: int = Field(0, description="the sampler's seed")
    address: str | None = Field(None, description="Ray cluster address; None = start a local instance")
    cpus_per_trial: float = Field(1, gt=0, description="CPUs each Ray trial reserves")
    gpus_per_trial: float = Field(0, ge=0, description="GPUs each Ray trial reserves")

    @classmethod
    def build(cls, **values) -> SweepSettings:
        """Validate, naming the first bad setting in one line."""
        return validate_as(cls, values, "sweep setting")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; `best.json` from a sweep and `config.yaml` from a run both load here."""
    path = Path(path)
    if not path.is_file():
        raise LorabenchError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as err:
        raise LorabenchError(f"cannot read config file {path}: {first_line(err)}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise LorabenchError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
    # A sweep's best.json wraps the config next to its score; accept it directly.
    return loaded.get("config", loaded) if "config" in loaded and isinstance(loaded["config"], dict) else loaded


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested mappings; values in `override` win, None in `override` means 'not given'."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict):
            merged[key] = merge(merged[key] if isinstance(merged.get(key), dict) else {}, value)
        else:
            merged[key] = value
    return merged


def preset_dict(name: str) -> dict[str, Any] | None:
    path = PRESET_DIR / f"{name}.yaml"
    return read_config_file(path) if path.is_file() else None


def first_error(err: ValidationError) -> tuple[str, str, str]:
    """pydantic's first complaint as (dotted location, message, error type): its own report is a table."""
    first = err.errors()[0]
    return ".".join(str(part) for part in first["loc"]), first["msg"].removeprefix("Value error, "), first["type"]


def validate_as(schema: type[BaseModel], raw: dict[str, Any], what: str = "config", source: str = ""):
    """Validate `raw` against `schema`, naming the first bad key in one line."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        where, message, kind = first_error(err)
        suffix = f" in {source}" if source else ""
        if kind == "extra_forbidden":
            raise LorabenchError(f"unknown {what} key '{where}'{suffix}") from err
        raise LorabenchError(f"invalid {what} value for '{where}'{suffix}: {message}") from err


def validate(raw: dict[str, Any]) -> RunConfig:
    """Turn a merged mapping into a RunConfig."""
    return validate_as(RunConfig, raw)


def resolve_config(
    model: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Build the run configuration from a model preset, a config file and explicit overrides (in that order)."""
    file_values = read_config_file(config_file) if config_file else {}
    file_model = file_values.get("model") if isinstance(file_values.get("model"), dict) else {}
    model_name = model or file_model.get("name") or ModelConfig().name
    preset = preset_dict(model_name) or {}
    raw = merge(preset, file_values)
    names_a_model = file_model.get("name") or file_model.get("source")
    if model and names_a_model and model != file_model.get("name"):
        # An explicit --model replaces a file's model section written for another model (its source, targets and
        # pooling are that model's); a section naming no model holds settings for whichever model is given.
        raw["model"] = dict(preset.get("model", {"source": model}))
    raw.setdefault("model", {})["name"] = model_name
    if not raw["model"].get("source"):
        raw["model"]["source"] = model_name
    raw = merge(raw, overrides or {})
    return validate(raw)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`section.key=value` strings (the CLI's --set) as nested overrides; values are read as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for assignment in assignments:
        path, equals, text = assignment.partition("=")
        keys = path.strip().split(".")
        if not equals or len(keys) < 2 or not all(keys):
            raise LorabenchError(f"--set takes section.key=value (e.g. train.warmup=0.05), not {assignment!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise LorabenchError(f"--set {path}: cannot read the value {text!r}") from err
        target = nested
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return nested


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
