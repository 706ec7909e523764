"""The `probe` kind (`model.method: probe`): a frozen pretrained model's pooled embeddings + a logistic regression.

No gradient flows through the encoder, so training is one pass of scoring plus a linear fit: the cheapest neural
approach, and the one a careful engineer tries first. The encoder is the run's base model loaded from its source
again (as LoRA runs load theirs); the fitted head is stored as plain arrays (safetensors) and JSON, never pickle.
`export --format onnx` traces the encoder, the pooling and the head into one graph (`ProbeProbabilities`).
The training recipe caches embeddings on disk by model and texts (`embedding_cache`), so a comparison, a sweep or
a rerun embeds each text set once.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from lorabench.core.config import RunConfig
from lorabench.core.console import progress_bar, quiet_libraries
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.runtime import choose_device
from lorabench.core.storage import RunDir, load_arrays, replace_dir, save_arrays, write_atomic
from lorabench.data.batching import length_sorted_batches
from lorabench.data.tokenization import encode, load_tokenizer
from lorabench.models.onnx import MODEL_FILE as ONNX_FILE
from lorabench.models.onnx import OnnxSettings, export_onnx
from lorabench.models.packing import (
    check_positions,
    classifier,
    is_decoder_classifier,
    padded_inputs,
    resolve_pooling,
)
from lorabench.models.split_zip import cache_root
from lorabench.models.weights import ResolvedModel, load_base_model, resolve_source, sentence_transformers_pooling

KIND = "probe"
MODEL_DIR = "probe"
HEAD_FILE = "head.safetensors"
SETTINGS_FILE = "settings.json"


def pooled(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per row: the first token, the mean of the real tokens, or the last real token."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    # last: the highest position holding a real token, whichever side the padding is on
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return hidden[torch.arange(len(hidden)), (positions * mask).argmax(dim=1)]


@dataclass
class ProbeClassifier:
    """A frozen encoder, its pooling, and a logistic regression on the pooled vectors."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    trains_in_epochs: ClassVar[bool] = False  # one fit, recorded as epoch 1
    adapts_a_base_model: ClassVar[bool] = False
    library_name: ClassVar[str] = "scikit-learn"
    tunes_encoder: ClassVar[bool] = False  # the encoder's weights train too (setfit): they count as trainable

    encoder: Any  # the base model under the classification head transformers built
    tokenizer: Any
    pooling: str
    max_length: int
    batch_size: int
    label_names: list
    regression: LogisticRegression | None = None
    settings: dict | None = None  # {"C": ..., "cv_folds": ...}
    threshold: float | None = None
    cache: Path | None = None  # embeddings on disk by model and texts (the training recipe sets it)
    fingerprint: str = ""  # the model's part of a cache key

    @classmethod
    def frozen(cls, config: RunConfig, label_names: list, batch_size: int | None = None) -> ProbeClassifier:
        """The run's base model, frozen, without a head yet (the tokenizer from the model's source)."""
        resolved = resolve_source(config.model)
        tokenizer = load_tokenizer(resolved.source, resolved.gguf_file, config.model.trust_remote_code)
        return cls._with_encoder(config, resolved, tokenizer, label_names, batch_size)

    @classmethod
    def _with_encoder(cls, config, resolved, tokenizer, label_names, batch_size) -> ProbeClassifier:
        quiet_libraries()
        model = load_base_model(resolved, config.model, label_names, tokenizer.pad_token_id)
        pooling = resolve_pooling(config.model.pooling, model, sentence_transformers_pooling(resolved))
        encoder = classifier(model).base_model.to(choose_device()).eval().requires_grad_(False)
        fingerprint = json.dumps([config.model.source, config.model.gguf_file, config.model.config_overrides,
                                  _files_stamp(resolved), pooling, config.train.max_length], default=str)  # fmt: skip
        return cls(encoder, tokenizer, pooling, config.train.max_length, batch_size or config.train.eval_batch_size,
                   list(label_names), fingerprint=fingerprint)  # fmt: skip

    def embed(self, texts: list[str]) -> np.ndarray:
        """Pooled float32 vectors (n, hidden), from the cache when these texts were embedded before."""
        path = self._cache_path(texts)
        if path is not None and path.is_file():
            return np.load(path)
        vectors = self._embed(texts)
        if path is not None:
            write_atomic(path, _npy_bytes(vectors))
        return vectors

    def _embed(self, texts: list[str]) -> np.ndarray:
        encoded = encode(self.tokenizer, texts, np.full(len(texts), -1), self.max_length, "embed")
        pad_id = self.tokenizer.pad_token_id
        sequences = [ids or [pad_id] for ids in encoded.input_ids]  # an empty text: one pad token, as lora does
        check_positions(self.encoder, max(map(len, sequences)), self.max_length)
        device = next(self.encoder.parameters()).device
        options = {"use_cache": False} if is_decoder_classifier(self.encoder) else {}
        vectors = np.zeros((len(texts), self.encoder.config.hidden_size), dtype=np.float32)
        with progress_bar("embed", len(texts)) as bar, torch.inference_mode():
            for rows in length_sorted_batches(np.array([len(s) for s in sequences]), self.batch_size):
                inputs = padded_inputs([sequences[i] for i in rows], pad_id, self.tokenizer.padding_side)
                inputs = {key: value.to(device) for key, value in inputs.items()}
                hidden = self.encoder(**inputs, **options).last_hidden_state
                mask = inputs.get("attention_mask", torch.ones(hidden.shape[:2], dtype=torch.long, device=device))
                vectors[rows] = pooled(hidden.float(), mask, self.pooling).cpu().numpy()
                bar.advance(len(rows))
        return vectors

    def _cache_path(self, texts: list[str]) -> Path | None:
        if self.cache is None:
            return None
        key = hashlib.sha256("\0".join([self.fingerprint, *texts]).encode("utf-8", "surrogatepass")).hexdigest()
        return self.cache / f"{key}.npy"

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (n, k), columns in `label_names` order."""
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
        return self.regression.predict_proba(self.embed(texts))

    @property
    def parameter_count(self) -> int:
        return int(self.regression.coef_.size + self.regression.intercept_.size)

    def tune(self, texts: list[str], labels: np.ndarray, config: RunConfig) -> str:
        """Nothing: a probe's encoder stays frozen (lorabench.models.setfit tunes its own first). Returns the
        precision the encoder trained in, for the run record: none trained, and embeddings are computed in fp32."""
        return "fp32"

    def save(self, run_dir: str | Path) -> None:
        """The head's arrays, its settings and the tokenizer into the run's probe/ directory, swapped in whole."""
        replace_dir(lambda directory: save_head(self, directory), Path(run_dir) / MODEL_DIR)

    def read_saved(self, run_dir: str | Path) -> ProbeClassifier:
        """This encoder with the head read back from the run's files (records.saved_copy checks the two agree)."""
        regression, settings, _ = read_head(RunDir(run_dir).file(MODEL_DIR))
        return replace(self, regression=regression, settings=settings)

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> ProbeClassifier:
        """A finished run: the encoder from the model's source, the tokenizer and head from the run."""
        run = RunDir(run_dir)
        config, summary = run.config(), run.summary()
        directory = run.file(MODEL_DIR)
        regression, settings, _ = read_head(directory)
        tokenizer = load_tokenizer(str(directory), trust_remote_code=config.model.trust_remote_code)
        probe = cls._with_encoder(config, resolve_source(config.model), tokenizer, summary.label_names, batch_size)
        return replace(probe, regression=regression, settings=settings, threshold=summary.threshold)

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(
            "export --merge merges an adapter into its base model; a probe run trained none (export it without "
            "--merge: the copy holds the head, and loads the encoder from the model's source)"
        )

    def export_onnx(self, directory: Path, quantize: str) -> dict:
        """The frozen encoder, its pooling and the head as one ONNX graph (lorabench.models.onnx)."""
        encoder = self.encoder.to("cpu")
        settings = OnnxSettings(
            pad_id=self.tokenizer.pad_token_id, padding_side=self.tokenizer.padding_side, max_length=self.max_length,
            batch_size=self.batch_size, pooling=self.pooling, quantize=quantize,
        )  # fmt: skip
        head = ProbeProbabilities(encoder, self.pooling, self.regression.coef_, self.regression.intercept_)
        export_onnx(encoder, self.tokenizer, settings, directory, head)
        return {"max_length": self.max_length, "pooling": self.pooling, "quantize": quantize,
                "usage": f"onnx/{ONNX_FILE} maps input_ids and attention_mask (int64, padded) to probabilities; "
                "two classes: predict label_names[1] when P(label_names[1]) >= threshold; otherwise the arg-max "
                "class"}  # fmt: skip


class ProbeProbabilities(torch.nn.Module):
    """(input_ids, attention_mask) -> class probabilities as a probe scores: the frozen encoder, `pooled`, and the
    logistic regression as a linear layer and a softmax (two classes: scikit-learn's sigmoid of its one logit z is
    the softmax of (0, z)). The module a probe's ONNX graph is traced from."""

    def __init__(self, encoder, pooling: str, coef: np.ndarray, intercept: np.ndarray):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        if len(coef) == 1:
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        self.head = torch.nn.Linear(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
            self.head.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        options = {"use_cache": False} if is_decoder_classifier(self.encoder) else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **options).last_hidden_state
        return torch.softmax(self.head(pooled(hidden.float(), attention_mask, self.pooling)), dim=-1)


def embedding_cache() -> Path:
    return cache_root() / "embeddings"


def save_head(probe: ProbeClassifier, directory: Path) -> None:
    """The head's arrays (safetensors), its settings and pooling (JSON) and the tokenizer into `directory`."""
    save_arrays(directory / HEAD_FILE, {"coef": probe.regression.coef_, "intercept": probe.regression.intercept_})
    settings = {**(probe.settings or {}), "pooling": probe.pooling, "label_names": probe.label_names}
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    probe.tokenizer.save_pretrained(directory)


def read_head(directory: Path) -> tuple[LogisticRegression, dict, str]:
    """The saved logistic regression, its fit settings (C, cv_folds) and the pooling it was fitted on."""
    try:
        arrays = load_arrays(directory / HEAD_FILE)
        settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
    except Exception as err:  # OSError, JSON errors, safetensors' own error for a damaged file
        raise LorabenchError(f"cannot load the probe in {directory} ({first_line(err)}); train the run again") from err
    regression = LogisticRegression()
    regression.classes_ = np.arange(len(settings["label_names"]))
    regression.coef_, regression.intercept_ = arrays["coef"], arrays["intercept"]
    regression.n_features_in_ = arrays["coef"].shape[1]
    return regression, {key: settings[key] for key in ("C", "cv_folds") if key in settings}, settings["pooling"]


def _files_stamp(resolved: ResolvedModel) -> list:
    """Sizes and times of a local model's files: a cache key that changes when the weights do."""
    path = Path(resolved.source)
    if not resolved.is_local or not path.exists():
        return [resolved.source]
    files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file())
    return [
        (str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
