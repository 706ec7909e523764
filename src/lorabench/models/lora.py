"""The `lora` kind: a pretrained transformer under a fresh classification head, fine-tuned through a peft LoRA adapter.

A run keeps the adapter and head (and the tokenizer) in ADAPTER_DIR; the base weights are loaded from the model's
source again. transformers and peft take seconds to import, so they are imported inside the functions that build
a model: the other kinds and the light commands never pay for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file

from lorabench.core.config import LoraSettings, RunConfig
from lorabench.core.console import progress_bar, quiet_libraries
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.runtime import autocast_dtype, choose_device
from lorabench.core.storage import RunDir, replace_dir
from lorabench.data.batching import length_sorted_batches
from lorabench.data.tokenization import Encoded, encode, encode_windows, load_tokenizer, mean_by_owner
from lorabench.models.dequantized import drop_dequantized_gguf_marker
from lorabench.models.onnx import MODEL_FILE, OnnxSettings, export_onnx
from lorabench.models.packing import batch_logits, check_positions, own_pooling
from lorabench.models.weights import ResolvedModel, load_base_model, resolve_source

KIND = "lora"
ADAPTER_DIR = "adapter"
FULL_KIND = "full"
FULL_MODEL_DIR = "model"
DECISION_USAGE = "two classes: predict label_names[1] when P(label_names[1]) >= threshold; otherwise the arg-max class"


# peft's own LoraConfig options of each LoRA variant: DoRA splits each weight update into magnitude and direction,
# rsLoRA scales by alpha / sqrt(r) instead of alpha / r, PiSSA starts the adapter from the weights' principal
# singular vectors (a fast randomized SVD; the saved adapter is converted back to plain LoRA on the original
# weights). LoRA+ is plain LoRA trained with a higher lr for B (the recipe's optimizer).
VARIANT_OPTIONS: dict[str, dict] = {
    "lora": {},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "pissa": {"init_lora_weights": "pissa_niter_4"},
    "loraplus": {},
}
PISSA_INITIAL_DIR = "pissa_initial"  # the untrained PiSSA adapter, which converts the trained one (peft)
# LoRA+: B's lr over A's (and the head's); the LoRA+ paper's recommended ratio for classification-sized tasks
LORAPLUS_LR_RATIO = 16


def add_lora(model, settings: LoraSettings, method: str = "lora"):
    """Wrap with a peft LoRA adapter of the `method` variant; peft also marks the classification head as trainable
    and saved."""
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN_TARGETS

    targets = settings.target_modules
    if targets is None and model.config.model_type not in KNOWN_TARGETS:
        targets = "all-linear"  # an architecture peft has no default for: adapt every linear layer
    lora_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        bias=settings.bias,
        target_modules=targets,
        **VARIANT_OPTIONS[method],
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as err:
        raise LorabenchError(f"cannot apply LoRA: {first_line(err)}") from err


def optimizer_for(method: str, model, trainable: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable weights; for LoRA+ peft's grouping, which trains every B matrix at
    LORAPLUS_LR_RATIO times the lr."""
    if method != "loraplus":
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=LORAPLUS_LR_RATIO, weight_decay=weight_decay
    )


def initial_adapter(model, directory: Path, write: bool) -> Path:
    """PiSSA's untrained adapter in `directory`, saved once when `write` (a resumed run initialises the same one
    from the same seed): the trained adapter is saved as its difference from it, plain LoRA on the original
    weights (peft's `path_initial_model_for_weight_conversion`)."""
    if write and not directory.is_dir():
        adapter = model.peft_config["default"]
        initialisation, adapter.init_lora_weights = adapter.init_lora_weights, True  # peft's recipe for this
        replace_dir(lambda tmp: model.save_pretrained(tmp, safe_serialization=True), directory)
        adapter.init_lora_weights = initialisation
    return directory


def parameter_counts(model) -> dict[str, int | float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / total, 4),
    }


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The LoRA and head tensors: all a checkpoint needs, since the base weights never change."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def score_encoded(
    model,
    encoded: Encoded,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    pad_id: int,
    padding_side: str = "right",
    description: str = "evaluate",
    packed: bool = False,
    pooling: str | None = None,
) -> np.ndarray:
    """Softmax probabilities in the input's row order, computed in length-sorted batches (packed or padded)."""
    model.eval()
    probabilities = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(encoded.lengths, batch_size)
    with progress_bar(description, len(encoded)) as bar, torch.inference_mode():
        for rows in batches:
            sequences = [encoded.input_ids[i] for i in rows]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = batch_logits(model, sequences, pad_id, padding_side, device, packed, pooling)
            probabilities[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            bar.advance(len(rows))
    return probabilities


def _unmerged_lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer  # deferred: seconds to import (module docstring)

    return [module for module in model.modules() if isinstance(module, LoraLayer) and not module.merged]


@contextmanager
def adapter_merged_on_cpu(model, device: torch.device) -> Iterator[None]:
    """Score with the adapter merged into the base weights on a CPU, then put the base weights back bit for bit.

    An unmerged adapter runs two extra small products per layer that a CPU pays dearly for: minilm scored 1000
    tweets in 30.9 s unmerged and 12.8 s merged (same probabilities to 1e-6). Unmerging by subtraction would leave
    rounding in the base weights and break exact resume, so they are copied and restored instead; on a GPU the
    extra products are cheap and the copy would cost memory, so nothing changes there."""
    layers = _unmerged_lora_layers(model) if device.type == "cpu" else []
    saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved, strict=True):
                layer.get_base_layer().weight.copy_(weight)
                layer.merged_adapters.clear()  # peft's record of what is merged: nothing, the weights are the base's


@dataclass
class LoraClassifier:
    """A base model with its LoRA adapter and head, and the tokenizer that feeds it."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = ADAPTER_DIR
    trains_in_epochs: ClassVar[bool] = True
    adapts_a_base_model: ClassVar[bool] = True
    library_name: ClassVar[str] = "peft"

    model: Any  # a peft model
    tokenizer: Any
    label_names: list
    threshold: float | None
    max_length: int
    batch_size: int
    device: torch.device
    amp_dtype: torch.dtype | None
    packed: bool = False
    pooling: str | None = None  # resolved (packing.resolve_pooling); None: the head's own token (older runs)
    initial_adapter: Path | None = None  # PiSSA's untrained adapter: saving converts the trained one against it
    long_texts: str = "truncate"  # data.long_texts: "windows" scores overlapping windows and averages them

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> LoraClassifier:
        """Rebuild a finished run's model: the base from its source, then the saved adapter and head."""
        run = RunDir(run_dir)
        config, summary = run.config(), run.summary()
        model_dir = run.file(cls.model_dir)
        tokenizer = load_tokenizer(str(model_dir), trust_remote_code=config.model.trust_remote_code)
        device = choose_device()
        model = cls._load_model(model_dir, config, summary.label_names, tokenizer.pad_token_id).to(device)
        model.eval()
        settings = config.train
        # A run trained in fp16 on a GPU is still usable on a CPU, in fp32.
        fp16_on_cpu = settings.precision == "fp16" and device.type != "cuda"
        amp_dtype = None if fp16_on_cpu else autocast_dtype(settings.precision, device, training=False)
        return cls(model, tokenizer, summary.label_names, summary.threshold, settings.max_length,
                   batch_size or settings.eval_batch_size, device, amp_dtype, pooling=summary.pooling,
                   long_texts=config.data.long_texts)  # fmt: skip

    @classmethod
    def _load_model(cls, adapter_dir: Path, config: RunConfig, label_names: list, pad_token_id: int):
        """The base from its source under the saved adapter and head, merged on a CPU (a loaded run only scores:
        adapter_merged_on_cpu says why)."""
        from peft import PeftModel

        quiet_libraries()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise LorabenchError(f"{adapter_dir.parent} has no trained adapter ({ADAPTER_DIR}/adapter_config.json)")
        base = load_base_model(resolve_source(config.model), config.model, label_names, pad_token_id)
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
        except Exception as err:  # safetensors, peft and torch each raise their own types for a damaged adapter
            raise LorabenchError(
                f"cannot load the adapter in {adapter_dir} ({first_line(err)}); the file is damaged or from "
                "another model: train the run again or restore it from a copy"
            ) from err
        if choose_device().type == "cpu":
            model.merge_adapter()
        return model

    def restore_saved(self, run_dir: str | Path) -> None:
        """Put the weights the run saved (its best epoch) back into the model being trained. A PiSSA adapter was
        saved converted to plain LoRA on the original weights, which the training model no longer holds: the
        model is then loaded as `predict` loads it."""
        from peft import set_peft_model_state_dict

        if self.initial_adapter is not None:
            run = RunDir(run_dir)
            self.model = self._load_model(run.file(ADAPTER_DIR), run.config(), self.label_names,
                                          self.tokenizer.pad_token_id).to(self.device)  # fmt: skip
            return
        set_peft_model_state_dict(self.model, load_file(Path(run_dir) / ADAPTER_DIR / "adapter_model.safetensors"))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (n, k), tokenized and batched exactly as training scores its splits."""
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        if self.long_texts == "windows":
            encoded, owners = encode_windows(self.tokenizer, texts, self.max_length)
        else:
            encoded, owners = encode(self.tokenizer, texts, np.full(len(texts), -1), self.max_length, "predict"), None
        # A decoder tokenizer without BOS turns "" into no tokens at all; score it as a lone pad (= eos) token.
        encoded.input_ids = [ids or [self.tokenizer.pad_token_id] for ids in encoded.input_ids]
        check_positions(self.model, int(encoded.lengths.max()), self.max_length)
        probabilities = self.score(encoded, "predict")
        return probabilities if owners is None else mean_by_owner(probabilities, owners, len(texts))

    def score(self, encoded: Encoded, description: str) -> np.ndarray:
        """Probabilities of already tokenized rows (training scores its splits this way every epoch)."""
        pad_id, side = self.tokenizer.pad_token_id, self.tokenizer.padding_side
        with adapter_merged_on_cpu(self.model, self.device):
            return score_encoded(self.model, encoded, self.batch_size, self.device, self.amp_dtype, pad_id, side,
                                 description, self.packed, self.pooling)  # fmt: skip

    def save(self, run_dir: str | Path) -> None:
        """The adapter, head and tokenizer into the run, swapped in whole."""

        def build(directory: Path) -> None:
            conversion = {} if self.initial_adapter is None else {
                "path_initial_model_for_weight_conversion": str(self.initial_adapter)}  # fmt: skip
            self.model.save_pretrained(directory, safe_serialization=True, **conversion)
            if conversion:
                _restore_head(self.model, directory / "adapter_model.safetensors")
            self.tokenizer.save_pretrained(directory)

        replace_dir(build, Path(run_dir) / self.model_dir)

    def export_merged(self, directory: Path) -> dict:
        """The adapter merged into the base (peft's merge_and_unload): a plain Transformers checkpoint.

        Refused for mean pooling: `AutoModelForSequenceClassification` would load it without complaint and pool
        its head's own token, so every prediction would silently differ from the run's."""
        if self.pooling == "mean":
            raise LorabenchError(
                "export --merge writes a plain Transformers model, which pools its head's own token, but this run "
                "pools the mean of its tokens (model.pooling mean); export with --format onnx (pooling included) "
                "or without --merge"
            )
        merged = self._merged()
        merged.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        return {"max_length": self.max_length, "pooling": own_pooling(merged),
                "usage": DECISION_USAGE + " (config.json id2label)"}  # fmt: skip

    def export_onnx(self, directory: Path, quantize: str) -> dict:
        """The merged model with the run's pooling and a softmax as one ONNX graph (lorabench.models.onnx)."""
        merged = self._merged()
        settings = OnnxSettings(
            pad_id=self.tokenizer.pad_token_id, padding_side=self.tokenizer.padding_side, max_length=self.max_length,
            batch_size=self.batch_size, pooling=self.pooling or own_pooling(merged), quantize=quantize,
        )  # fmt: skip
        export_onnx(merged, self.tokenizer, settings, directory)
        return {"max_length": self.max_length, "pooling": settings.pooling, "quantize": quantize,
                "usage": f"onnx/{MODEL_FILE} maps input_ids and attention_mask (int64, padded) to probabilities; "
                + DECISION_USAGE}  # fmt: skip

    def _merged(self):
        """The adapter merged into the base (peft's merge_and_unload; a run loaded on a CPU is merged already and
        only sheds its adapter layers), on the CPU."""
        already = not _unmerged_lora_layers(self.model)
        merged = (self.model.unload() if already else self.model.merge_and_unload(safe_merge=True)).to("cpu")
        drop_dequantized_gguf_marker(merged)
        return merged


def _restore_head(model, adapter_file: Path) -> None:
    """peft's PiSSA-to-LoRA conversion keeps only the LoRA matrices: put the trained head (and any other module
    peft saves whole) back into the converted file."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    whole = {
        name: tensor.contiguous() for name, tensor in get_peft_model_state_dict(model).items() if "lora_" not in name
    }
    save_file({**load_file(adapter_file), **whole}, adapter_file, metadata={"format": "pt"})


class FullClassifier(LoraClassifier):
    """A pretrained model whose every weight was fine-tuned (`model.method: full`): the run saves the whole model,
    a plain Transformers checkpoint that loads without its base."""

    kind: ClassVar[str] = FULL_KIND
    model_dir: ClassVar[str] = FULL_MODEL_DIR
    adapts_a_base_model: ClassVar[bool] = False
    library_name: ClassVar[str] = "transformers"

    @classmethod
    def _load_model(cls, model_dir: Path, config: RunConfig, label_names: list, pad_token_id: int):
        quiet_libraries()
        if not (model_dir / "config.json").is_file():
            raise LorabenchError(f"{model_dir.parent} has no trained model ({FULL_MODEL_DIR}/config.json)")
        model_config = config.model.model_copy(update={"gguf_file": None, "quantize": "none"})
        return load_base_model(ResolvedModel(str(model_dir), None, True), model_config, label_names, pad_token_id)

    def restore_saved(self, run_dir: str | Path) -> None:
        """Put the saved weights back; the tied ones saved once come back through their twin."""
        saved = load_file(Path(run_dir) / FULL_MODEL_DIR / "model.safetensors")
        missing, unexpected = self.model.load_state_dict(saved, strict=False)
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})  # {target: source}: saved once
        if unexpected or set(missing) - tied:
            raise LorabenchError(
                f"the model saved in {run_dir} does not fit the one trained ({[*unexpected, *missing][:3]})"
            )

    def save(self, run_dir: str | Path) -> None:
        drop_dequantized_gguf_marker(self.model)  # a de-quantized GGUF base saves as plain weights
        super().save(run_dir)

    def _merged(self):
        """The model itself: there is no adapter to merge."""
        drop_dequantized_gguf_marker(self.model)
        return self.model.to("cpu")
