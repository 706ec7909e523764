"""Shared fixtures: the synthetic sets committed in tests/data, the real disaster tweets (read from ../shared), small
labelled files, and tiny random RoBERTa / MPNet / Llama / Mistral models with a tokenizer trained on the fly on the
synthetic texts, saved as local model directories.

Two tiers: a test that reads the real tweets (through `tweets_dir`) is marked `slow` here, as are whole modules
that start processes, Ray or a browser (their own `pytestmark`); `make test-fast` runs the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from lorabench.cli import main
from lorabench.core.console import quiet_libraries, set_progress

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT.parent / "shared" / "data" / "disaster_tweets"
SYNTHETIC = ROOT / "tests" / "data"  # binary/ and four_class/, written by tests/data/make_synthetic.py

# The cores shared out among pytest-xdist's workers (one each on 2 cores): more threads than cores would make torch's
# OpenMP threads wait on each other.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))))
set_progress(False)
quiet_libraries()
# The suite's caches (probe embeddings, assembled split-zip models) stay out of the user's own cache.
os.environ["LORABENCH_CACHE"] = tempfile.mkdtemp(prefix="lorabench-test-cache-")


def torchrun(processes: int) -> list[str]:
    """The start of a command line that launches the rest as `processes` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def failure_text(done: subprocess.CompletedProcess) -> str:
    """A failed launch's stderr for an assertion message: its start, where a process prints its own error, and
    its end (torchrun's launcher traceback comes last and would fill a plain tail)."""
    text = done.stderr
    return text if len(text) <= 4000 else f"{text[:2500]}\n[...]\n{text[-1500:]}"


def pytest_collection_modifyitems(items) -> None:
    """Tests that read the real tweets belong to the slow tier."""
    for item in items:
        if "tweets_dir" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tweets_dir() -> Path:
    """The real tweets; missing, a slow test fails naming the folder on CI and is skipped on a developer's machine."""
    if not (TWEETS / "train.csv").is_file():
        message = f"the slow tier needs the disaster tweets at {TWEETS} (train.csv, test.csv)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return TWEETS


@pytest.fixture(scope="session")
def binary_data() -> Path:
    """The committed synthetic binary set: id, keyword, location, text, target (train.csv, unlabelled test.csv)."""
    return SYNTHETIC / "binary"


@pytest.fixture(scope="session")
def four_class_data() -> Path:
    """The committed synthetic 4-class set with its own columns: doc_id, headline, body, topic."""
    return SYNTHETIC / "four_class"


def synthetic_texts() -> list[str]:
    binary = pd.read_csv(SYNTHETIC / "binary" / "train.csv")["text"].tolist()
    four = pd.read_csv(SYNTHETIC / "four_class" / "train.csv")
    return binary + (four["headline"] + ". " + four["body"]).tolist()


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, tweets_dir) -> Path:
    """A directory with 240 real labelled tweets as train.csv and 40 unlabelled ones as test.csv."""
    directory = tmp_path_factory.mktemp("small_data")
    pd.read_csv(tweets_dir / "train.csv").head(240).to_csv(directory / "train.csv", index=False)
    pd.read_csv(tweets_dir / "test.csv").head(40).to_csv(directory / "test.csv", index=False)
    return directory


def _train_tokenizer(texts: list[str], decoder: bool):
    """A 300-token byte-level BPE tokenizer: RoBERTa-style specials for encoders, eos-only for decoders."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<unk>"] if decoder else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=2, special_tokens=specials)
    if not decoder:
        bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
        return PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
            cls_token="<s>",
            sep_token="</s>",
        )
    # Decoders like Llama and Mistral ship no pad token: lorabench must supply pad = eos itself.
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _tiny_config(kind: str, vocab_size: int):
    from transformers import LlamaConfig, MistralConfig, MPNetConfig, RobertaConfig

    common = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    if kind in ("roberta", "mpnet"):
        config_class = RobertaConfig if kind == "roberta" else MPNetConfig
        return config_class(**common, max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    config_class = LlamaConfig if kind == "llama" else MistralConfig
    return config_class(
        **common, num_key_value_heads=1, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=None
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random RoBERTa, MPNet, Llama and Mistral base models (no head, like a hub checkpoint), safetensors."""
    from transformers import AutoModel

    texts = synthetic_texts()
    root = tmp_path_factory.mktemp("tiny_models")
    paths = {}
    for kind in ("roberta", "mpnet", "llama", "mistral"):
        tokenizer = _train_tokenizer(texts, decoder=kind in ("llama", "mistral"))
        torch.manual_seed(0)
        model = AutoModel.from_config(_tiny_config(kind, len(tokenizer)))
        paths[kind] = root / kind
        model.save_pretrained(paths[kind], safe_serialization=True)
        tokenizer.save_pretrained(paths[kind])
    return paths


@pytest.fixture(scope="session")
def tiny_causal_lm(tiny_models, tmp_path_factory) -> Path:
    """A tiny random Llama with its language-model head (a decoder that continues text), for prompt runs."""
    import shutil

    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("tiny_causal_lm") / "llama"
    torch.manual_seed(0)
    config = _tiny_config("llama", len(_train_tokenizer(synthetic_texts(), decoder=True)))
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_models["llama"] / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tiny_models, tmp_path_factory) -> Path:
    """A tiny random BERT base with the tiny RoBERTa's tokenizer, laid out as a sentence-transformers folder
    trained for mean pooling (modules.json + 1_Pooling/config.json), as all-MiniLM-L6-v2 is."""
    import json
    import shutil

    from transformers import AutoModel, BertConfig

    directory = tmp_path_factory.mktemp("tiny_bert") / "bert"
    tokenizer_dir = tiny_models["roberta"]
    torch.manual_seed(0)
    vocab_size = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=1)  # fmt: skip
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, directory / name)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]  # fmt: skip
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return directory


@pytest.fixture(scope="session")
def llama_run(tiny_models, small_data, tmp_path_factory) -> Path:
    """A finished tiny Llama run for predict / serve (its scores vary from text to text, unlike a tiny RoBERTa's).
    Shared: tests read it and write elsewhere."""
    from lorabench.api import resolve_config, train

    out = tmp_path_factory.mktemp("llama_run") / "run"
    config = resolve_config(
        str(tiny_models["llama"]),
        overrides={
            "data": {"source": str(small_data)},
            "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "max_length": 48, "eval_batch_size": 64},
        },
    )
    train(config, out)
    return out


@pytest.fixture(scope="session")
def llama_classifier(llama_run):
    from lorabench.models.registry import load_classifier

    return load_classifier(llama_run)


@pytest.fixture
def in_process(monkeypatch):
    """compare's training and cost measurement in this process: spawning one per model costs seconds of imports
    each, and the isolation itself is tested through test_compare.py's `comparison`."""
    from lorabench.workflows import compare

    monkeypatch.setattr(compare, "run_isolated", lambda _what, function, *args: compare.reporting(function, *args))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the `lorabench` command in-process, as its console entry point does."""

    def run(*args) -> Result:
        monkeypatch.setattr(sys, "argv", ["lorabench", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            set_progress(False)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
