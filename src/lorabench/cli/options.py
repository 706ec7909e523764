"""The flags of the commands, generated from the settings' pydantic fields (name, type, choices, help): a setting
is written once, in lorabench.core.config or lorabench.core.settings, and `--set section.key=value` reaches every
other one."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel

from lorabench.core.config import (
    COMMA_SEPARATED,
    DATA_COLUMNS,
    DataConfig,
    LoraSettings,
    ModelConfig,
    PromptSettings,
    TrainSettings,
)

SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraSettings,
    "prompt": PromptSettings,
    "train": TrainSettings,
}
# Friendlier names than --name / --source for the two settings every command takes.
FLAGS = {"model.name": ("--model", "-m"), "data.source": ("--data", "-d"), "model": ("--model", "-m"), "data": ("--data", "-d")}  # fmt: skip
SET_HELP = "any run setting as section.key=value, e.g. --set train.warmup=0.05 (repeatable)"


def _flag(section: str, key: str) -> tuple[str, ...]:
    path = f"{section}.{key}" if section else key
    if path in FLAGS:
        return FLAGS[path]
    return ("--" + (f"lora-{key}" if section == "lora" else key).replace("_", "-"),)


def _option_type(annotation: Any) -> Any:
    """The type a flag parses to: the field's own, with `bool | Literal["auto"]` as a plain on/off flag (auto stays
    the config's) and lists or mappings left out (None; they come through --set or a config file)."""
    if get_origin(annotation) in (list, dict):
        return None
    members = [member for member in get_args(annotation) if member is not type(None)] or [annotation]
    if get_origin(annotation) is Literal:
        return annotation
    if bool in members:
        return bool
    member = members[0]
    return member if get_origin(member) is Literal or member in (int, float, str, Path) else None


def _parameter(schema: type[BaseModel], section: str, key: str) -> inspect.Parameter | None:
    """One keyword parameter whose default is the typer option for `schema.key` (None: no flag for it)."""
    field = schema.model_fields[key]
    kind = str if COMMA_SEPARATED in field.metadata else _option_type(field.annotation)
    if kind is None:
        return None
    names = _flag(section, key)
    if kind is bool:
        names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
    name = f"{section}__{key}" if section else key
    option = typer.Option(None, *names, help=field.description)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)


def schema_options(fields: dict[str, tuple[type[BaseModel], list[str]]]) -> Callable:
    """Decorator: adds an option per schema field (`{section: (schema, keys)}`; section "" for flat settings)
    and hands the command the given values as one nested `overrides` mapping (None = not given)."""

    def decorate(command: Callable) -> Callable:
        generated = [
            parameter
            for section, (schema, keys) in fields.items()
            for key in keys
            if (parameter := _parameter(schema, section, key)) is not None
        ]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            overrides: dict[str, Any] = {}
            for parameter in generated:
                section, _, key = parameter.name.rpartition("__")
                value = values.pop(parameter.name)
                (overrides.setdefault(section, {}) if section else overrides)[key] = value
            return command(overrides=overrides, **values)

        own = [p for p in inspect.signature(command).parameters.values() if p.name != "overrides"]
        wrapper.__signature__ = inspect.Signature(own + generated)
        return wrapper

    return decorate


def run_settings(*sections: str) -> dict[str, tuple[type[BaseModel], list[str]]]:
    return {section: (SECTIONS[section], list(SECTIONS[section].model_fields)) for section in sections}


def data_options(*keys: str, section: str = "data") -> dict[str, tuple[type[BaseModel], list[str]]]:
    """The data settings `keys` and the user's columns (DATA_COLUMNS): one set of flags for every command that
    reads data, handed to it as overrides[section]."""
    return {section: (DataConfig, [*keys, *DATA_COLUMNS])}
