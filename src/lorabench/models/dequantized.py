"""GGUF weights de-quantized once into the cache as a plain Transformers folder.

transformers parses a GGUF file three times per load (tokenizer, config, tensors) and de-quantizes every tensor
each time: about 17 s for SmolLM2-135M on 2 CPU cores, paid again by every train, predict, serve and compare
member. The same weights, saved once as fp32 safetensors with the converted tokenizer, load in under a second with
the same tokens and logits (bench/results/gguf_dequantized_cache.json). A GGUF file over MAX_GGUF_BYTES is read
directly, as before: its fp32 copy would take 4-8x its size on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lorabench.core.console import quiet_libraries, say
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.storage import safe_dir_name
from lorabench.models.split_zip import built_once, cache_root

MAX_GGUF_BYTES = 1 << 30


def dequantized_folder(directory: Path, gguf_file: str, model_name: str) -> Path | None:
    """The cached plain folder of `directory/gguf_file`, written on first use; None for a file too large to copy.

    Keyed by the file's path, size and modification time and by the transformers version that converted it, so a
    replaced file or another conversion gets a folder of its own."""
    from transformers import __version__ as transformers_version  # deferred: seconds to import

    path = (directory / gguf_file).resolve()
    stat = path.stat()
    if stat.st_size > MAX_GGUF_BYTES:
        return None
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{transformers_version}".encode()).hexdigest()
    target = cache_root() / "models" / f"{safe_dir_name(path.stem)}-{key[:12]}"

    def write(staging: Path) -> Path:
        return _write(directory, gguf_file, staging / "model", target, model_name)

    try:
        return built_once(target, f"write the de-quantized copy of {gguf_file}", write)
    except (ValueError, KeyError, RuntimeError) as err:  # an architecture transformers' GGUF reader lacks
        raise LorabenchError(f"cannot load model {model_name} from {gguf_file}: {first_line(err)}") from err


def _write(directory: Path, gguf_file: str, folder: Path, target: Path, model_name: str) -> Path:
    """Load the GGUF file as a causal LM (its own head kept: the prompt method scores with it) and its tokenizer,
    untouched by lorabench's tokenizer options, and save both into `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file).save_pretrained(folder)  # checks the kind first
    say(f"de-quantizing {gguf_file} of model '{model_name}' into {target} (once)")
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    drop_dequantized_gguf_marker(model)
    model.save_pretrained(folder)
    return folder


def drop_dequantized_gguf_marker(model) -> None:
    """A GGUF base is loaded de-quantized into plain fp32 layers, but transformers keeps its GGUF quantizer on the
    model and then refuses to save it; without the marker it saves as an ordinary checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if quantizer.quantization_config.quant_method != "gguf" or getattr(quantizer, "packed_modules", None):
        raise LorabenchError("export --merge needs a base with plain (de-quantized) weights; this one is quantized")
    model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
