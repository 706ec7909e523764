"""The Python API behind the CLI: `from lorabench.api import train, resolve_config`."""

from lorabench.compare import compare
from lorabench.config import RunConfig, resolve_config
from lorabench.data import load_splits
from lorabench.export import export_run
from lorabench.predict import load_classifier, predict_file
from lorabench.report import render as render_report
from lorabench.serve import create_app, serve
from lorabench.sweep import SweepSettings, load_space, sweep

__all__ = [
    "RunConfig",
    "compare",
    "create_app",
    "export_run",
    "load_classifier",
    "load_splits",
    "predict_file",
    "render_report",
    "resolve_config",
    "serve",
    "SweepSettings",
    "load_space",
    "sweep",
    "train",
]


def train(config: RunConfig, out_dir, resume: bool = False, on_epoch_end=None) -> dict:
    """Train `config.model` and write its run record: the `tfidf` baseline, or any other model with LoRA.

    Imports are deferred so that `import lorabench.api` does not load a training stack it may not use.
    """
    if config.model.name == "tfidf":
        from lorabench.baseline import train_tfidf
        from lorabench.distributed import on_main, world

        # one process fits the baseline; under torchrun the others wait for its summary
        return on_main(lambda: train_tfidf(config, out_dir, resume=resume, on_epoch_end=on_epoch_end), world())
    from lorabench.train import train as train_lora

    return train_lora(config, out_dir, resume=resume, on_epoch_end=on_epoch_end)
