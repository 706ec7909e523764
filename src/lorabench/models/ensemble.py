"""The averaging kind `ensemble`: a weighted average of member runs' class probabilities, with its own threshold.

`train --folds K` (the K fold runs, equal weights) and `compare --ensemble` (the compared models, weights fitted on
validation) both write one (lorabench.training.averaging). The members are complete run directories inside it,
RUN/members/<name>/, so the run is self-contained and copies like any other. A member may be of any kind, so it
loads through lorabench.models.registry, which hands its loader to `load_with` (importing the registry here would
be an import cycle: the registry imports this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lorabench.core.errors import LorabenchError
from lorabench.core.storage import RunDir, read_json, write_json

KIND = "ensemble"
MODEL_DIR = "members"
WEIGHTS_FILE = "ensemble.json"  # in MODEL_DIR: {"weights": {member name: weight}, "label_names": [...]}

MemberLoader = Callable[[Path, int | None], Any]  # (member run directory, batch size) -> its Classifier


@dataclass
class AveragingClassifier:
    """Members' class probabilities averaged with weights that sum to 1; every member has the same classes."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    trains_in_epochs: ClassVar[bool] = False  # its members train; the average is formed once they have
    adapts_a_base_model: ClassVar[bool] = False  # members may, but there is no single adapter to load with peft
    library_name: ClassVar[str] = "lorabench"

    members: dict[str, Any]  # member name -> its Classifier
    weights: dict[str, float]  # member name -> weight, in member order
    label_names: list
    threshold: float | None = None

    def __post_init__(self) -> None:
        check_weights(self.weights)
        for name, member in self.members.items():
            if list(member.label_names) != list(self.label_names):
                raise LorabenchError(
                    f"ensemble member {name} has the classes {member.label_names}, not {self.label_names}"
                )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """The weighted average of the members' probabilities, shape (len(texts), number of classes)."""
        return sum(weight * self.members[name].predict_proba(texts) for name, weight in self.weights.items())

    def save(self, run_dir: str | Path) -> None:
        """Write the weights beside the members, which must be in RUN/members/<name>/ already."""
        write_weights(Path(run_dir) / MODEL_DIR, self.weights, self.label_names)

    @classmethod
    def load_with(cls, run_dir: str | Path, batch_size: int | None, load_member: MemberLoader) -> AveragingClassifier:
        """The finished ensemble run's members, each loaded by `load_member`, with the run's threshold."""
        run = RunDir(run_dir)
        settings = read_json(run.file(MODEL_DIR) / WEIGHTS_FILE)
        weights = {str(name): float(weight) for name, weight in settings["weights"].items()}
        members = {name: load_member(run.file(MODEL_DIR) / name, batch_size) for name in weights}
        return cls(members, weights, settings["label_names"], run.summary().threshold)

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(
            "export --merge merges one adapter into its base model; an ensemble run averages several runs "
            "(export it without --merge: the copy holds every member)"
        )

    def export_onnx(self, directory: Path, quantize: str) -> dict:
        raise LorabenchError(
            "export --format onnx traces one model; an ensemble run averages several runs (export it without "
            "--format: the copy holds every member, or export each member's run to ONNX)"
        )


def check_weights(weights: dict[str, float]) -> None:
    """Refuse an empty ensemble, negative weights or weights that do not sum to 1."""
    values = np.array(list(weights.values()), dtype=np.float64)
    if values.size == 0 or (values < 0).any() or not np.isclose(values.sum(), 1.0, atol=1e-6):
        raise LorabenchError(f"ensemble weights must be non-negative and sum to 1, not {weights}")


def write_weights(directory: Path, weights: dict[str, float], label_names: list) -> None:
    """The ensemble's weights file in its members' directory, once every member is in it."""
    check_weights(weights)
    missing = [name for name in weights if not (directory / name).is_dir()]
    if missing:
        raise LorabenchError(f"ensemble members missing from {directory}: {', '.join(missing)}")
    write_json(directory / WEIGHTS_FILE, {"weights": weights, "label_names": list(label_names)})
