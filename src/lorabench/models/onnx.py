"""The `onnx` kind: a LoRA run's merged model, its pooling and the softmax (or a probe run's frozen encoder, its
pooling and the logistic-regression head) as one ONNX graph, run by onnxruntime.

`lorabench export --format onnx` writes it (`export_onnx`, called by the lora kind after merging and by the probe
kind); the export
directory holds the run's config and a summary naming this kind, so `predict` and `serve` load it like any run.
Texts are tokenized with the `tokenizers` library from the exported tokenizer.json, cut and batched by length
exactly as the lora kind does (tokenization.encode, batching.length_sorted_batches, tokenization.pad_batch):
neither transformers nor peft is imported, and onnxruntime runs the graph on every core.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel

from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.storage import RunDir, read_record, write_record
from lorabench.data.batching import length_sorted_batches
from lorabench.data.tokenization import encode, pad_batch
from lorabench.models.packing import padded_logits

KIND = "onnx"
MODEL_DIR = "onnx"
MODEL_FILE = "model.onnx"
SETTINGS_FILE = "settings.json"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
NOT_AGAIN = "this is an ONNX export already; export the run it came from instead"


class OnnxSettings(BaseModel):
    """settings.json beside the graph: what tokenizing and batching need, and what the graph holds."""

    pad_id: int
    padding_side: Literal["left", "right"]
    max_length: int
    batch_size: int
    pooling: str
    quantize: Literal["none", "int8"]


class ProbabilityModel(torch.nn.Module):
    """(input_ids, attention_mask) -> class probabilities: the padded path's own logits (packing.padded_logits,
    the run's pooling included) and a softmax; the module the ONNX graph is traced from."""

    def __init__(self, model, pooling: str | None):
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        return torch.softmax(padded_logits(self.model, inputs, self.pooling).float(), dim=-1)


def require(module: str):
    """An ONNX library, or one line saying how to install it (the `onnx` extra, as for the other extras)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise LorabenchError(f"ONNX exports need the {module} package: pip install 'lorabench[onnx]'") from err


def export_onnx(
    model, tokenizer, settings: OnnxSettings, directory: Path, probabilities: torch.nn.Module | None = None
) -> None:
    """Trace `model` (merged, no adapter) with its pooling and softmax, or `probabilities` (a module from input_ids
    and attention_mask to class probabilities around `model`: a probe's encoder and head), into directory/onnx,
    int8-quantized on request, with the tokenizer and settings.json."""
    require("onnx")  # torch.onnx.export writes through it
    quantization = require("onnxruntime.quantization") if settings.quantize == "int8" else None
    target = directory / MODEL_DIR
    target.mkdir()
    wrapper = (probabilities or ProbabilityModel(model, settings.pooling)).eval()
    # two rows of different lengths: the traced graph keeps the attention mask's padding branch
    rows = tokenizer(["an example to trace the graph with", "another"])["input_ids"]
    example = pad_batch(rows, settings.pad_id, settings.padding_side)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side constants and the legacy exporter
        traced = Path(scratch) / MODEL_FILE
        try:
            # dynamo=False: torch's newer exporter needs onnxscript; the tracer's graph gives the PyTorch run's
            # probabilities (tests/test_onnx.py checks 1e-4; 3e-8 measured on a tiny BERT)
            torch.onnx.export(wrapper, (example["input_ids"], example["attention_mask"]), str(traced),
                              input_names=list(INPUTS), output_names=["probabilities"],
                              dynamic_axes={**axes, "probabilities": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)  # fmt: skip
        except Exception as err:  # the tracer raises its own types for an operator ONNX lacks
            raise LorabenchError(
                f"cannot export {model.config.model_type} to ONNX ({first_line(err)}); export without --format onnx"
            ) from err
        if quantization is not None:
            logging.disable(logging.WARNING)  # its advice to pre-process, logged on the root logger at every call
            try:
                quantization.quantize_dynamic(traced, target / MODEL_FILE, weight_type=quantization.QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        else:
            shutil.move(traced, target / MODEL_FILE)
    tokenizer.backend_tokenizer.save(str(target / TOKENIZER_FILE))
    write_record(target / SETTINGS_FILE, settings)


class BackendTokenizer:
    """The part of a transformers tokenizer that tokenization.encode calls, over the `tokenizers` library (which
    transformers' fast tokenizers run on): the same ids, without importing transformers."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(path))
        self.backend.no_truncation()
        self.backend.no_padding()
        added = self.backend.get_added_tokens_decoder()
        self.all_special_ids = [token_id for token_id, token in added.items() if token.special]

    def __call__(self, texts: list[str], truncation: bool, padding: bool) -> dict[str, list[list[int]]]:
        return {"input_ids": [encoding.ids for encoding in self.backend.encode_batch(texts)]}


@dataclass
class OnnxClassifier:
    """An exported ONNX graph (probabilities out) with its tokenizer, run by onnxruntime."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    trains_in_epochs: ClassVar[bool] = False
    adapts_a_base_model: ClassVar[bool] = False
    library_name: ClassVar[str] = "onnxruntime"

    session: Any  # an onnxruntime.InferenceSession
    tokenizer: BackendTokenizer
    settings: OnnxSettings
    label_names: list
    threshold: float | None
    batch_size: int

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> OnnxClassifier:
        """The graph, tokenizer and settings of an ONNX export, with a session on every core."""
        onnxruntime = require("onnxruntime")
        run = RunDir(run_dir)
        summary, directory = run.summary(), run.file(MODEL_DIR)
        settings = read_record(directory / SETTINGS_FILE, OnnxSettings, "ONNX export settings")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        # no spin-waiting between runs: the threads would take the cores from tokenizing and padding the next
        # batch (minilm, 3263 tweets on 2 busy cores: 16 s instead of 20 s)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(
                str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
            tokenizer = BackendTokenizer(directory / TOKENIZER_FILE)
        except Exception as err:  # onnxruntime and tokenizers raise their own types for a damaged file
            raise LorabenchError(
                f"cannot load the ONNX export in {directory} ({first_line(err)}); export the run again"
            ) from err
        return cls(session, tokenizer, settings, summary.label_names, summary.threshold,
                   batch_size or settings.batch_size)  # fmt: skip

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (n, k): tokenized, cut and batched by length as the lora kind scores."""
        probabilities = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not texts:
            return probabilities
        settings = self.settings
        encoded = encode(self.tokenizer, texts, np.full(len(texts), -1), settings.max_length, "predict")
        ids = [row or [settings.pad_id] for row in encoded.input_ids]  # as the lora kind scores an empty text
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        for rows in length_sorted_batches(lengths, self.batch_size):
            batch = pad_batch([ids[i] for i in rows], settings.pad_id, settings.padding_side)
            feed = {name: batch[name].numpy() for name in INPUTS}
            probabilities[rows] = self.session.run(None, feed)[0]
        return probabilities

    def save(self, run_dir: str | Path) -> None:
        raise LorabenchError("an ONNX export is not trained or saved by lorabench; export the run again")

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(NOT_AGAIN)

    def export_onnx(self, directory: Path, quantize: str) -> dict:
        raise LorabenchError(NOT_AGAIN)
