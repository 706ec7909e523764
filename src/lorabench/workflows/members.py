"""What a comparison trains: its config file (shared settings and per-member entries) and each member's resolved
run config, the models crossed with methods (`minilm:probe`, ...), and how a member's failure becomes its row.
Everything is checked here, before anything trains, so a combination that cannot work is refused in one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lorabench.core.config import (
    METHOD_KINDS,
    DataConfig,
    LoraSettings,
    ModelConfig,
    PromptSettings,
    RunConfig,
    TrainSettings,
    merge,
    read_config_file,
    resolve_config,
    validate_as,
)
from lorabench.core.errors import LorabenchError, first_line
from lorabench.models.prompt import KIND as PROMPT_KIND
from lorabench.models.prompt import check_decoder

METHODS = tuple(METHOD_KINDS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowCap(_Strict):
    """The only data setting one model may change: fewer training rows. Validation and test stay shared."""

    max_train_rows: int | None = Field(None, gt=0)


class ModelEntry(_Strict):
    """One model's own settings; they win over the shared ones and the command line (they are its exceptions)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    data: RowCap = Field(default_factory=RowCap)


class CompareConfig(_Strict):
    """A comparison's config file: shared data and training settings, and per-model entries."""

    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)
    models: dict[str, ModelEntry] = Field(default_factory=dict)


def load_compare_config(path: str | Path) -> CompareConfig:
    return validate_as(CompareConfig, read_config_file(path), "compare config", str(path))


def _given(section: BaseModel) -> dict[str, Any]:
    """Only the values a config file actually set (the defaults must not override a model's preset)."""
    return section.model_dump(mode="json", exclude_unset=True)


def plan_runs(
    models: list[str],
    settings: CompareConfig,
    data: str | None = None,
    test: str | None = None,
    epochs: int | None = None,
    max_train_rows: int | None = None,
    overrides: dict[str, Any] | None = None,
    methods: list[str] | None = None,
) -> dict[str, RunConfig]:
    """Each member's resolved config (the models crossed with `methods`: `grid`): preset < shared config <
    command-line flags (`overrides`: any run settings as nested sections, under the named ones) < the member's own
    entry."""
    if not models:
        raise LorabenchError("no models to compare: pass --models a,b or list them under 'models' in --config")
    shared = {"data": _given(settings.data), "train": _given(settings.train)}
    named = {"data": {"source": data, "test": test, "max_train_rows": max_train_rows}, "train": {"epochs": epochs}}
    shared = merge(merge(shared, overrides or {}), named)
    members = grid(models, methods, lambda model: _resolve(model, None, shared, settings))
    duplicates = sorted({name for name in members if members.count(name) > 1})
    if duplicates:
        raise LorabenchError(f"model listed twice: {', '.join(duplicates)}")
    return {name: _resolve(*split_member(name), shared, settings) for name in members}


def split_member(name: str) -> tuple[str, str | None]:
    """`minilm:probe` -> ('minilm', 'probe'); a name without a known method after its last colon is a model."""
    model, _, method = name.rpartition(":")
    if model and method in METHODS:
        return model, method
    if model and not Path(name).exists():
        raise LorabenchError(f"unknown method '{method}' in '{name}'; the methods are {', '.join(METHODS)}")
    return name, None


def grid(models: list[str], methods: list[str] | None, resolve: Callable[[str], RunConfig]) -> list[str]:
    """The members: each model crossed with `methods` (`minilm` -> `minilm:probe`, `minilm:lora`, ...); a member
    named with its method, and a kind without methods (tfidf), stay as they are."""
    unknown = [method for method in methods or [] if method not in METHODS]
    if unknown:
        raise LorabenchError(f"unknown method '{unknown[0]}' in --methods; the methods are {', '.join(METHODS)}")
    if not methods:
        return list(models)
    members = []
    for name in models:
        model, method = split_member(name)
        takes_methods = method is None and resolve(model).method is not None
        members += [f"{model}:{each}" for each in methods] if takes_methods else [name]
    return members


def _resolve(model: str, method: str | None, shared: dict[str, Any], settings: CompareConfig) -> RunConfig:
    """One member's config: preset < shared settings < its own entry (under its member name) and method."""
    name = f"{model}:{method}" if method else model
    entry = settings.models.get(name, ModelEntry())
    own = {
        "model": {**_given(entry.model), **({"method": method} if method else {})},
        "lora": _given(entry.lora),
        "prompt": _given(entry.prompt),
        "train": _given(entry.train),
        "data": _given(entry.data),
    }
    try:
        config = resolve_config(model, None, merge(shared, own))
        if config.kind == PROMPT_KIND:
            check_decoder(config)
        return config
    except LorabenchError as err:
        raise LorabenchError(f"model {name}: {err}") from err


def reporting(function: Callable[..., object], *args: object) -> tuple[str, str]:
    """Call `function(*args)`: ('ok', '') when it returns, ('failed', reason) instead of its exception."""
    try:
        function(*args)
        return "ok", ""
    except Exception as err:  # any failure, a library's own bug included, becomes this model's row
        reason = first_line(err)
        if not isinstance(err, LorabenchError) and str(err).strip():
            reason = f"{type(err).__name__}: {reason}"  # a library's own error: name its type
        return "failed", reason
