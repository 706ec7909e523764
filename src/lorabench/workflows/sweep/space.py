"""The search space: a YAML file of parameters written as in a W&B sweep, validated, then sampled by Optuna.

W&B's parameter syntax is kept so one file serves every backend: the wandb backend passes it through unchanged,
the optuna and ray backends turn it into Optuna distributions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from lorabench.core.config import PRESET_DIR, first_error, merge, validate
from lorabench.core.errors import LorabenchError, first_line

STUDY_SPACE = PRESET_DIR / "spaces" / "study.yaml"

# The study's parameter names (and the train command's flag names) for the run-config keys they set.
ALIASES = {
    "lora_rank": "lora.r",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_bias": "lora.bias",
    "lr": "train.lr",
    "max_length": "train.max_length",
    "batch_size": "train.batch_size",
    "weight_decay": "train.weight_decay",
    "warmup": "train.warmup",
}
Scalar = bool | int | float | str


class Parameter(BaseModel):
    """One parameter: exactly one of `value`, `values`, or a distribution with `min` and `max`."""

    model_config = ConfigDict(extra="forbid")
    value: Scalar | None = None
    values: list[Scalar] | None = None
    distribution: Literal["uniform", "log_uniform_values", "int_uniform"] | None = None
    min: int | float | None = None
    max: int | float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        given = self.model_fields_set
        kinds = ["value" in given, "values" in given, bool(given & {"distribution", "min", "max"})]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of value, values, or distribution with min and max")
        if "value" in given and self.value is None:
            raise ValueError("value must not be null (a missing value keeps the preset's)")
        if "values" in given and not self.values:
            raise ValueError("values must list at least one value")
        if kinds[2]:
            if self.min is None or self.max is None:
                raise ValueError("a distribution needs both min and max")
            if not self.min < self.max:
                raise ValueError(f"min ({self.min}) must be below max ({self.max})")
            if self.kind == "log_uniform_values" and self.min <= 0:
                raise ValueError("log_uniform_values needs min > 0")
            if self.kind == "int_uniform" and not (isinstance(self.min, int) and isinstance(self.max, int)):
                raise ValueError("int_uniform needs integer min and max")
        return self

    @property
    def kind(self) -> str:
        """'value', 'values' or the distribution; like W&B, min/max without a distribution means uniform
        (int_uniform when both are integers)."""
        if "value" in self.model_fields_set:
            return "value"
        if "values" in self.model_fields_set:
            return "values"
        if self.distribution:
            return self.distribution
        return "int_uniform" if isinstance(self.min, int) and isinstance(self.max, int) else "uniform"

    def extremes(self) -> list[Scalar]:
        """The values that bound what this parameter can take (checked against the run config up front)."""
        if self.kind == "value":
            return [self.value]
        if self.kind == "values":
            return list(self.values)
        return [self.min, self.max]

    def distribution_for_optuna(self):
        if self.kind == "values":
            return CategoricalDistribution(self.values)
        if self.kind == "int_uniform":
            return IntDistribution(self.min, self.max)
        return FloatDistribution(self.min, self.max, log=self.kind == "log_uniform_values")


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Parameter]

    @model_validator(mode="after")
    def _known_names(self) -> SearchSpace:
        for name in self.parameters:
            if "." not in ALIASES.get(name, name):
                raise ValueError(f"unknown parameter '{name}': use one of {', '.join(ALIASES)} or section.key")
        if not self.sampled():
            raise ValueError("no parameter to search: give at least one with values or a distribution")
        return self

    def sampled(self) -> dict[str, Parameter]:
        return {name: p for name, p in self.parameters.items() if p.kind != "value"}

    def fixed(self) -> dict[str, Scalar]:
        return {name: p.value for name, p in self.parameters.items() if p.kind == "value"}

    def distributions(self) -> dict:
        """Optuna distributions of the sampled parameters (fixed ones are not searched)."""
        return {name: p.distribution_for_optuna() for name, p in self.sampled().items()}

    def suggest(self, trial) -> dict[str, Scalar]:
        """Draw the sampled parameters from an Optuna trial (or Ray's wrapper of one)."""
        params = {}
        for name, dist in self.distributions().items():
            if isinstance(dist, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        return params

    def overrides(self, params: dict[str, Scalar]) -> dict[str, dict[str, Any]]:
        """The run-config overrides for one trial: the fixed parameters plus the sampled `params`."""
        nested: dict[str, dict[str, Any]] = {}
        for name, value in {**self.fixed(), **params}.items():
            section, key = ALIASES.get(name, name).split(".", 1)
            nested.setdefault(section, {})[key] = value
        return nested

    def check_against(self, base: dict, where: str) -> None:
        """Validate every parameter's bounds against the run config, so a bad range fails before trial 1."""
        for name, parameter in self.parameters.items():
            for value in parameter.extremes():
                try:
                    validate(merge(base, self.overrides({name: value})))
                except LorabenchError as err:
                    raise LorabenchError(f"search space {where}: parameter '{name}' = {value!r}: {err}") from err

    def to_wandb(self) -> dict[str, dict]:
        """The parameters in W&B's sweep syntax (the file's own)."""
        return {name: p.model_dump(exclude_unset=True) for name, p in self.parameters.items()}


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Read and validate a search-space YAML file (the study's when `path` is None); one clear line on error."""
    path = Path(path) if path else STUDY_SPACE
    if not path.is_file():
        raise LorabenchError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise LorabenchError(f"cannot read search space {path}: {first_line(err)}") from err
    if not isinstance(raw, dict):
        raise LorabenchError(f"search space {path} must be a mapping with a 'parameters' section")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as err:
        where, message, _ = first_error(err)
        raise LorabenchError(f"bad search space {path}: {where + ': ' if where else ''}{message}") from err
