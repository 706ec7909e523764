"""Validated run configuration: presets (YAML files) < a user's config file < command-line flags.

Every section forbids unknown keys so a typo in a config file is named instead of silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorabench.errors import LorabenchError

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_DATA = "mehdiiraqui/twitter_disaster"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("minilm", description="preset name, local directory or hub id, as the user gave it")
    source: str = Field("", description="what to load: a directory, a hub id, or 'package:MODULE[/SUBDIR]'")
    gguf_file: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    quantize: Literal["none", "4bit", "8bit"] = Field("none", description="bitsandbytes QLoRA; CUDA only")
    config_overrides: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="set on the architecture's config when loading, e.g. hidden_dropout_prob"
    )


class DataConfig(_Section):
    source: str = DEFAULT_DATA
    test: str | None = None
    text_column: str = "text"
    label_column: str = "target"
    id_column: str = "id"
    train_size: float = Field(0.8, gt=0, lt=1)
    split_seed: int = 42
    max_train_rows: int | None = Field(None, gt=0)
    strict: bool = False


class LoraSettings(_Section):
    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] | None = None


class TrainSettings(_Section):
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(8, gt=0, description="rows per training batch when batch_tokens is 0")
    # Training batches hold up to `batch_tokens` padded tokens (rows x longest row) of length-sorted rows, so
    # short texts share a batch with many others and padding is nearly nil. 2048 (about 60 tweets): on 2 CPU
    # cores minilm trains an epoch 3.8x faster than the study's recipe (8 random rows, checkpointing) at the
    # same validation F1, and a GPU gets batches large enough to keep it busy (bench/README.md); small data
    # sets get smaller batches (tokenization.MIN_STEPS_PER_EPOCH). 0 = the study's `batch_size` random rows.
    batch_tokens: int = Field(2048, ge=0)
    packing: bool = Field(False, description="padding-free batches; pays only with a varlen attention kernel")
    lr: float = Field(1e-4, gt=0)
    # When small data lowers the token budget (at least 50 steps per epoch), lr is multiplied by
    # sqrt(budget used / batch_tokens), Adam's square-root rule: lr is tuned for full batches, and the preset
    # minilm lr on 5-tweet batches collapsed to one class (bench/README.md, "lr on small data").
    scale_lr_with_batch: bool = True
    weight_decay: float = Field(0.001, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of all optimizer steps spent warming up")
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = Field(0.3, gt=0)
    max_length: int = Field(512, gt=1)
    eval_batch_size: int = Field(64, gt=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # auto: only when one batch's estimated activations would not fit in the free memory (it costs a forward)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    tracking: Literal["local", "wandb", "none"] = "local"
    save_every_steps: int | None = Field(None, gt=0, description="also checkpoint every N optimizer steps, mid-epoch")


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()


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
        raise LorabenchError(f"cannot read config file {path}: {str(err).splitlines()[0]}") from None
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


def validate_as(schema: type[BaseModel], raw: dict[str, Any], what: str = "config", source: str = ""):
    """Validate `raw` against `schema`, naming the first bad key in one line (pydantic's report is a table)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        suffix = f" in {source}" if source else ""
        if first["type"] == "extra_forbidden":
            raise LorabenchError(f"unknown {what} key '{where}'{suffix}") from None
        raise LorabenchError(f"invalid {what} value for '{where}'{suffix}: {first['msg']}") from None


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
    if model and model != file_model.get("name"):
        # An explicit --model replaces the file's model section (its source would point elsewhere).
        raw["model"] = dict(preset.get("model", {"source": model}))
    raw.setdefault("model", {})["name"] = model_name
    if not raw["model"].get("source"):
        raw["model"]["source"] = model_name
    raw = merge(raw, overrides or {})
    return validate(raw)


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
