"""The Python API behind the CLI: `from lorabench.api import train, resolve_config`."""

from lorabench.config import RunConfig, resolve_config
from lorabench.data import load_splits
from lorabench.train import train

__all__ = ["RunConfig", "load_splits", "resolve_config", "train"]
