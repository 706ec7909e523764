"""The `setfit` kind (`model.method: setfit`): SetFit, the few-label answer many users know. The `setfit` package's
trainer first tunes every weight of the encoder on pairs of training texts (same class: close, other classes:
apart; cosine-similarity loss), then a probe's head is fitted on the tuned encoder's pooled embeddings
(lorabench.models.probe: a logistic regression, C by cross-validation on the training split).

Unlike a probe's, the encoder changes, so the run stores it (`setfit/encoder/`, safetensors, never pickle) and
loads it from there; head, pooling and tokenizer are stored as a probe stores them, and `export --format onnx`
traces encoder, pooling and head as for a probe. `setfit` is an optional dependency: `pip install
'lorabench[setfit]'`.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from lorabench.core.config import RunConfig
from lorabench.core.console import progress_enabled
from lorabench.core.errors import LorabenchError
from lorabench.core.runtime import autocast_dtype, precision_name
from lorabench.core.storage import RunDir, replace_dir
from lorabench.data.tokenization import load_tokenizer
from lorabench.models.packing import check_positions
from lorabench.models.probe import ProbeClassifier, read_head, save_head
from lorabench.models.weights import ResolvedModel, resolve_source

KIND = "setfit"
MODEL_DIR = "setfit"
ENCODER_DIR = "encoder"
# lorabench's pooling names as sentence-transformers' Pooling modes
POOLING_MODES = {"cls": "cls", "mean": "mean", "last": "lasttoken"}


@dataclass
class SetFitClassifier(ProbeClassifier):
    """A probe whose encoder SetFit tuned first; the run holds the tuned encoder."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    library_name: ClassVar[str] = "sentence-transformers"
    tunes_encoder: ClassVar[bool] = True

    def tune(self, texts: list[str], labels: np.ndarray, config: RunConfig) -> str:
        """SetFit's embedding phase on this encoder: `train.setfit_pairs` pairs per text and epoch, batches of
        `train.batch_size` pairs, every weight at `train.full_lr`, in fp32 unless `train.precision` asks for bf16
        or fp16. The pooled vectors change with it, so the embedding cache (keyed by the model's source) no longer
        applies. Returns the precision it trained in."""
        try:
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
            from setfit import SetFitModel, Trainer, TrainingArguments
        except ImportError as err:
            raise LorabenchError(
                f"model.method setfit needs the setfit package ({err.name} is missing): pip install 'lorabench[setfit]'"
            ) from err
        if config.model.gguf_file:  # its de-quantized copy (lorabench.models.dequantized) is a decoder
            raise LorabenchError("model.method setfit needs a model sentence-transformers loads, not a GGUF file")
        resolved = resolve_source(config.model)
        longest = max(map(len, self.tokenizer([str(text) for text in texts])["input_ids"]), default=0)
        check_positions(self.encoder, min(longest, self.max_length), self.max_length)  # before the tuning, too
        device = next(self.encoder.parameters()).device
        # `auto` keeps setfit's own fp32: bf16 autocast cost 0.03 val F1 on the tweets over two seeds
        # (bench/results/setfit_minilm.json) where full fine-tuning in lorabench's loop lost nothing
        amp_dtype = autocast_dtype("fp32" if config.train.precision == "auto" else config.train.precision, device)
        transformer = Transformer(resolved.source, max_seq_length=self.max_length)
        transformer.model = self.encoder.requires_grad_(True).train()  # the encoder loaded (and configured) already
        pooling = Pooling(self.encoder.config.hidden_size, POOLING_MODES[self.pooling])
        body = SentenceTransformer(modules=[transformer, pooling], device=str(device))
        with tempfile.TemporaryDirectory(prefix="lorabench-setfit-") as scratch:  # the trainer's output_dir
            arguments = TrainingArguments(
                output_dir=scratch, batch_size=config.train.batch_size, num_epochs=config.train.epochs,
                num_iterations=config.train.setfit_pairs, body_learning_rate=config.train.full_lr,
                seed=config.train.seed, report_to="none", save_strategy="no", logging_strategy="no",
                show_progress_bar=progress_enabled(), use_amp=amp_dtype == torch.float16,
            )  # fmt: skip
            trainer = Trainer(model=SetFitModel(model_body=body, model_head=LogisticRegression()), args=arguments)
            # setfit's own mixed precision (`use_amp`) is fp16 only, with its gradient scaler; bf16 needs no
            # scaler, so its forward passes simply run under autocast, as lorabench's own training loop does
            bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp_dtype == torch.bfloat16)
            with bf16, warnings.catch_warnings():  # its data loader asks for pinned memory whatever the device
                warnings.filterwarnings("ignore", message=".*pin_memory.*")
                trainer.train_embeddings([str(text) for text in texts], [int(label) for label in labels])
        self.encoder = transformer.model.eval().requires_grad_(False)
        self.cache = None
        return precision_name(amp_dtype)

    def save(self, run_dir: str | Path) -> None:
        """Head, settings and tokenizer as a probe's, and the tuned encoder, into the run's setfit/ directory."""

        def build(directory: Path) -> None:
            save_head(self, directory)
            self.encoder.save_pretrained(directory / ENCODER_DIR)

        replace_dir(build, Path(run_dir) / MODEL_DIR)

    def read_saved(self, run_dir: str | Path) -> SetFitClassifier:
        """The classifier read back from the run's files, the encoder included (records.saved_copy)."""
        return self._read(RunDir(run_dir), self.label_names, self.batch_size)

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> SetFitClassifier:
        run = RunDir(run_dir)
        summary = run.summary()
        return replace(cls._read(run, summary.label_names, batch_size), threshold=summary.threshold)

    @classmethod
    def _read(cls, run: RunDir, label_names: list, batch_size: int | None) -> SetFitClassifier:
        """The tuned encoder, tokenizer, pooling and head from the run's files."""
        config, directory = run.config(), run.file(MODEL_DIR)
        regression, settings, pooling = read_head(directory)
        tokenizer = load_tokenizer(str(directory), trust_remote_code=config.model.trust_remote_code)
        resolved = ResolvedModel(str(directory / ENCODER_DIR), None, True)
        classifier = cls._with_encoder(config, resolved, tokenizer, label_names, batch_size)
        return replace(classifier, pooling=pooling, regression=regression, settings=settings)

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(
            "export --merge merges an adapter into its base model; a setfit run holds its whole tuned encoder "
            "(export it without --merge)"
        )
