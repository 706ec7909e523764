"""The Python API behind the CLI: `from lorabench.api import train, resolve_config`.

Every name here is typed; records come back as the schemas in lorabench.core.schemas.
"""

from lorabench.core.config import RunConfig, resolve_config
from lorabench.core.schemas import (
    CompareManifest,
    DataChecks,
    InferenceCost,
    LabelIssues,
    Metrics,
    RunSummary,
    TrialRecord,
)
from lorabench.data.sources import TextSplits, load_splits
from lorabench.models.registry import Classifier, load_classifier
from lorabench.training.run import train
from lorabench.workflows.compare import compare
from lorabench.workflows.export import export_run
from lorabench.workflows.label_issues import find_label_issues
from lorabench.workflows.predict import predict_file
from lorabench.workflows.predict_ray import predict_on_ray
from lorabench.workflows.report import render as render_report
from lorabench.workflows.serve import ServeSettings, create_app, serve
from lorabench.workflows.sweep import SweepSettings, load_space, sweep

__all__ = [
    "Classifier",
    "CompareManifest",
    "DataChecks",
    "InferenceCost",
    "LabelIssues",
    "Metrics",
    "RunConfig",
    "RunSummary",
    "ServeSettings",
    "SweepSettings",
    "TextSplits",
    "TrialRecord",
    "compare",
    "create_app",
    "export_run",
    "find_label_issues",
    "load_classifier",
    "load_space",
    "load_splits",
    "predict_file",
    "predict_on_ray",
    "render_report",
    "resolve_config",
    "serve",
    "sweep",
    "train",
]
