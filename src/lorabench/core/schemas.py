"""The records lorabench writes and reads back: a run's summary.json, a comparison's compare.json, a sweep trial.

Each is a pydantic model, so a record is checked once when it is read (an old or edited file missing a field is
refused in one line naming it) and every reader uses attributes instead of string keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    # extra="ignore": a record written by a newer lorabench still loads; the fields read here are all checked
    model_config = ConfigDict(extra="ignore")


class Metrics(_Record):
    """Precision, recall and F1 of the positive class for two classes (macro averages for more), and accuracy."""

    f1: float
    precision: float
    recall: float
    accuracy: float


class RunSummary(_Record):
    """summary.json: what a finished run of any kind reports; `kind` says which classifier loads it."""

    model: str
    model_source: str
    kind: str | None = Field(None, description="the classifier kind; None in runs written before kinds existed")
    method: str | None = Field(
        None, description="how a pretrained model was trained (model.method); None: a kind without one, or older runs"
    )
    best_epoch: int
    epochs: int
    val: Metrics
    test: Metrics | None
    train_seconds: float
    peak_memory_mb: float
    trainable_params: int
    total_params: int
    trainable_percent: float
    label_names: list[int | str]
    # The F1-maximising threshold on P(positive) found on validation (two classes); predict/serve use it. The
    # metrics are at the arg-max (0.5) decision, so they compare fairly with the study.
    threshold: float | None
    rows: dict[str, int]
    truncated_texts: int = 0
    max_text_chars: int | None = Field(
        None,
        description="characters in the longest training text; serve sizes its text limit from it (None: older run)",
    )
    class_weights: list[float]
    device: str
    processes: int = 1
    effective_batch: dict[str, int] = Field(default_factory=dict, description="{'tokens': n} or {'rows': n}")
    lr: float | None = Field(None, description="the lr trained with (train.lr, or scaled with a smaller batch)")
    precision: str
    versions: dict[str, str] = Field(default_factory=dict)
    vocabulary_size: int | None = None
    pooling: str | None = Field(
        None, description="the resolved model.pooling (cls, mean, last); None: a kind without it, or an older run"
    )
    stopped_early_after: int | None = Field(
        None, description="the last epoch trained when train.patience stopped the run; None when it ran every epoch"
    )
    notes: list[str] = Field(default_factory=list)
    val_intervals: dict[str, tuple[float, float]] | None = Field(
        None,
        description="95% bootstrap interval (low, high) of each val metric; written by averaging runs, whose val "
        "metrics are out-of-fold (train --folds) or of fitted weights (compare --ensemble)",
    )


class InferenceCost(_Record):
    """cost.json: what using a finished run costs, measured once it is trained, in a fresh process that loads it
    as `predict` does (so neither training nor another model's memory counts)."""

    device: str = Field(description="where the model ran: cpu or cuda")
    texts: int = Field(description="validation texts scored in one bulk call")
    batch_size: int = Field(description="the run's eval batch size: texts per model call in bulk")
    predict_texts_per_s: float = Field(description="bulk throughput: texts / seconds of that call")
    latency_calls: int = Field(description="single-text calls timed, after a few untimed ones")
    latency_p50_ms: float
    latency_p95_ms: float
    inference_peak_mb: float = Field(description="the measuring process's peak resident memory, loading included")
    gpu_peak_mb: float | None = Field(description="peak GPU memory allocated; None without CUDA")
    size_mb: float = Field(description="the files `export` ships without --merge")
    merged_size_mb: float | None = Field(
        description="all parameters x 4 bytes (fp32), about what `export --merge` writes; None without frozen base"
    )


class SeedRun(_Record):
    """One training seed of a model in a comparison: where its run is and how it ended."""

    seed: int
    run_dir: str
    status: str = "pending"  # pending, ok or failed
    error: str = ""
    wall_seconds: float | None = None
    started: float | None = Field(None, description="when its training started (Unix time)")
    ended: float | None = Field(None, description="when its training ended (Unix time)")


class ModelStatus(_Record):
    """One model's line in compare.json: where its run is and how it ended."""

    name: str
    run_dir: str = Field(description="the first seed's run: its predictions and cost stand for the model")
    status: str = "pending"  # pending, ok (every seed trained) or failed
    error: str = ""
    wall_seconds: float | None = Field(None, description="training, loading and scoring of all seeds")
    plan: str = ""
    seeds: list[SeedRun] = Field(default_factory=list, description="empty in comparisons made before --seeds")
    cost_error: str = Field("", description="why the inference cost was not measured")

    def run_dirs(self) -> list[str]:
        """Every seed's run directory, the first one first."""
        return [run.run_dir for run in self.seeds] or [self.run_dir]


class CompareManifest(_Record):
    """compare.json: the comparison's data, machine and versions, and every model's status."""

    created: str
    data: dict[str, Any]
    rows: dict[str, int]
    seeds: int = Field(1, description="training seeds per model")
    data_checks: DataChecks | None = Field(None, description="checks of the shared split; None before they existed")
    hardware: dict[str, Any]
    versions: dict[str, str]
    models: list[ModelStatus]


class TextGroups(_Record):
    """Distinct texts with a property, the rows they cover, and the texts with the most rows as examples
    (normalised texts for the checks made after normalisation)."""

    texts: int
    rows: int
    examples: list[str]


class DataChecks(_Record):
    """Duplicates and conflicts in the labelled data (train and validation together), and overlaps between splits
    (lorabench.data.checks.check_texts). `*_normalised` fields compare texts after `normalise_text`; overlaps are
    None for a split that was not given. Each field's description is its label in `lorabench data` and reports."""

    labelled_rows: int
    duplicates: TextGroups = Field(description="repeated texts (labelled rows)")
    duplicates_normalised: TextGroups = Field(description="near duplicates: repeated after normalising")
    conflicts: TextGroups = Field(description="texts with conflicting labels")
    conflicts_normalised: TextGroups = Field(description="near duplicates with conflicting labels")
    validation_in_train: TextGroups | None = Field(description="validation rows whose text is in train")
    validation_in_train_normalised: TextGroups | None = Field(
        description="validation rows with a near duplicate in train"
    )
    test_in_labelled: TextGroups | None = Field(description="test rows whose text is labelled")
    test_in_labelled_normalised: TextGroups | None = Field(description="test rows with a labelled near duplicate")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def labelled_groups(self) -> list[tuple[str, TextGroups]]:
        """(label, counts) of every check that was made, in field order."""
        return [
            (field.description, getattr(self, name))
            for name, field in type(self).model_fields.items()
            if field.description and getattr(self, name) is not None
        ]


class TrialRecord(_Record):
    """One sweep trial as every backend reports it, for trials.csv, best.json and the charts."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL or RUNNING (Optuna's names)
    value: float | None
    params: dict[str, Any]
    seconds: float | None = None
    started: float | None = None  # Unix time
    finished: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # backend-specific columns (e.g. the W&B run id)


class LabelIssues(_Record):
    """What `lorabench data --label-issues RUN` found (lorabench.workflows.label_issues): the rows whose given
    label the run's held-out probabilities contradict, most likely mislabelled first."""

    run: str
    predictions: str = Field(description="the file checked: oof_predictions.csv, else val_predictions.csv")
    only_validation: bool = Field(description="True when the run had no out-of-fold predictions")
    checked_rows: int
    flagged_rows: int
    out: str = Field(description="the CSV of every flagged row")
    top: list[dict[str, Any]] = Field(description="the first flagged rows, as in the CSV")
    conflicting_texts: int = Field(description="texts the data labels both ways")
    conflicting_texts_checked: int = Field(description="of those, the texts among the checked rows")
    conflicting_texts_flagged: int = Field(description="of those, the texts with at least one flagged row")
