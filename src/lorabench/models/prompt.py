"""The `prompt` kind (`model.method: prompt`): a decoder answers a prompt, and each class scores the log-probability
of its label word after it. Nothing trains: "do I need to train at all?" answered on the user's own data.

With `prompt.shots: k`, k labelled training rows per class (seeded, never validation or test rows) are put before
each text, each followed by its class's word. Class probabilities are the softmax of the words' log-probabilities,
and a two-class run then gets its decision threshold calibrated on validation like every run. The run stores its
prompt, shots and words (JSON); the decoder loads from the model's source as LoRA runs load their base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from lorabench.core.config import PromptSettings, RunConfig
from lorabench.core.console import progress_bar, quiet_libraries
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.runtime import choose_device
from lorabench.core.storage import RunDir, read_json, replace_dir
from lorabench.data.tokenization import load_tokenizer, pad_batch
from lorabench.models.weights import ResolvedModel, resolve_source

KIND = "prompt"
MODEL_DIR = "prompt"
SETTINGS_FILE = "prompt.json"
# Architectures whose causal-LM class is a decoder's own (an encoder such as BERT also has a language-model head
# in transformers, but its predictions were trained to fill masks, not to continue a prompt).
ENCODERS = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "electra", "distilbert", "deberta", "deberta-v2")


def _options(resolved: ResolvedModel, config: RunConfig) -> dict:
    options = {"trust_remote_code": config.model.trust_remote_code}
    return {**options, "gguf_file": resolved.gguf_file} if resolved.gguf_file else options


def check_decoder(config: RunConfig) -> None:
    """Refuse an encoder for the prompt method from its config alone (cheap: no weights are read)."""
    from transformers import AutoConfig  # deferred: seconds to import (module docstring)

    resolved = resolve_source(config.model)
    try:
        model_type = AutoConfig.from_pretrained(resolved.source, **_options(resolved, config)).model_type
    except (OSError, ValueError, KeyError) as err:
        raise LorabenchError(f"cannot load {config.model.name} as a decoder: {first_line(err)}") from err
    if model_type in ENCODERS:
        raise LorabenchError(
            f"model.method prompt needs a decoder (a model that continues text); {config.model.name} is a "
            f"{model_type} encoder: use probe, lora or full"
        )


def load_decoder(resolved: ResolvedModel, config: RunConfig):
    """The model's causal language model, fp32, for scoring; an encoder is refused in one line."""
    from transformers import AutoModelForCausalLM  # deferred: seconds to import (module docstring)

    quiet_libraries()
    check_decoder(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.source, dtype=torch.float32, **_options(resolved, config))
    except (OSError, ValueError, KeyError) as err:
        raise LorabenchError(f"cannot load {config.model.name} as a decoder: {first_line(err)}") from err
    return model.to(choose_device()).eval().requires_grad_(False)


def choose_shots(train: pd.DataFrame, label_names: list, shots: int, seed: int) -> list[tuple[str, int]]:
    """`shots` training rows per class (all of a class's rows when it has fewer), drawn with `seed` and shuffled."""
    rng = np.random.default_rng(seed)
    chosen = []
    for class_id in range(len(label_names)):
        rows = np.flatnonzero(train["label"].to_numpy() == class_id)
        chosen += [int(row) for row in rng.choice(rows, size=min(shots, len(rows)), replace=False)]
    return [(str(train["text"].iloc[row]), int(train["label"].iloc[row])) for row in rng.permutation(chosen)]


@dataclass
class PromptClassifier:
    """A decoder, its tokenizer, the prompt template, one answer word per class, and the shots before each text."""

    kind: ClassVar[str] = KIND
    model_dir: ClassVar[str] = MODEL_DIR
    trains_in_epochs: ClassVar[bool] = False  # nothing trains; recorded as one pass
    adapts_a_base_model: ClassVar[bool] = False
    library_name: ClassVar[str] = "transformers"

    model: Any
    tokenizer: Any
    template: str
    words: list[str]  # one per class, in label_names order
    shots: list[tuple[str, int]]  # (training text, class id), in prompt order
    label_names: list
    max_length: int
    batch_size: int
    threshold: float | None = None

    @classmethod
    def build(cls, config: RunConfig, label_names: list, shots: list[tuple[str, int]]) -> PromptClassifier:
        resolved = resolve_source(config.model)
        tokenizer = load_tokenizer(resolved.source, resolved.gguf_file, config.model.trust_remote_code)
        return cls._from(config, config.prompt, resolved, tokenizer, label_names, shots)

    @classmethod
    def _from(cls, config, prompt: PromptSettings, resolved, tokenizer, label_names, shots, batch_size=None):
        given = prompt.label_words or {}
        missing = [str(name) for name in label_names if given and str(name) not in given]
        if missing:
            raise LorabenchError(f"prompt.label_words has no word for the class {missing[0]!r}")
        words = [given.get(str(name), str(name)) for name in label_names]
        if len(set(words)) < len(words):
            raise LorabenchError(f"prompt.label_words gives two classes the same word: {words}")
        return cls(load_decoder(resolved, config), tokenizer, prompt.template, words, shots, list(label_names),
                   config.train.max_length, batch_size or config.train.eval_batch_size)  # fmt: skip

    def prompt_for(self, text: str) -> str:
        """The shots, each answered with its class's word, then the text's own prompt."""
        shown = "".join(f"{self.template.format(text=shot)} {self.words[label]}\n\n" for shot, label in self.shots)
        return shown + self.template.format(text=text)

    def word_log_probabilities(self, texts: list[str]) -> np.ndarray:
        """log P(word of class c | prompt of text), summed over the word's tokens: shape (len(texts), classes)."""
        words = [self.tokenizer(f" {word}", add_special_tokens=False)["input_ids"] for word in self.words]
        scores = np.zeros((len(texts), len(words)), dtype=np.float64)
        pairs = [(row, c) for row in range(len(texts)) for c in range(len(words))]
        device = next(self.model.parameters()).device
        with progress_bar("prompt", len(pairs)) as bar, torch.inference_mode():
            for start in range(0, len(pairs), self.batch_size):
                batch = pairs[start : start + self.batch_size]
                sequences = [self._sequence(texts[row], words[c]) for row, c in batch]
                inputs = {
                    k: v.to(device) for k, v in pad_batch(sequences, self.tokenizer.pad_token_id, "right").items()
                }
                logits = self.model(**inputs).logits.float().log_softmax(dim=-1)
                for i, (row, c) in enumerate(batch):
                    first = len(sequences[i]) - len(words[c])  # the word's first position
                    positions = torch.arange(first, len(sequences[i]), device=device)
                    targets = torch.tensor(words[c], device=device)
                    scores[row, c] = logits[i, positions - 1, targets].sum().item()
                bar.advance(len(batch))
        return scores

    def _sequence(self, text: str, word: list[int]) -> list[int]:
        """The prompt's tokens, cut from the left to leave room for the word (the text's end and the question
        stay), then the word's."""
        ids = self.tokenizer(self.prompt_for(text))["input_ids"]
        return ids[-max(1, self.max_length - len(word)) :] + word

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Softmax over the classes' word log-probabilities, shape (len(texts), classes)."""
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
        scores = self.word_log_probabilities(texts)
        scores -= scores.max(axis=1, keepdims=True)
        return np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)

    def save(self, run_dir: str | Path) -> None:
        """The template, words and shots (JSON) and the tokenizer into the run's prompt/ directory."""

        def build(directory: Path) -> None:
            settings = {"template": self.template, "words": self.words, "label_names": self.label_names,
                        "shots": [{"text": text, "label": label} for text, label in self.shots]}  # fmt: skip
            (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False), "utf-8")
            self.tokenizer.save_pretrained(directory)

        replace_dir(build, Path(run_dir) / MODEL_DIR)

    def read_saved(self, run_dir: str | Path) -> PromptClassifier:
        """This decoder with the prompt read back from the run's files (records.saved_copy checks they agree)."""
        settings = _read_settings(RunDir(run_dir).file(MODEL_DIR))
        return replace(self, template=settings["template"], words=settings["words"], shots=settings["shots"])

    @classmethod
    def load(cls, run_dir: str | Path, batch_size: int | None = None) -> PromptClassifier:
        run = RunDir(run_dir)
        config, summary = run.config(), run.summary()
        directory = run.file(MODEL_DIR)
        settings = _read_settings(directory)
        tokenizer = load_tokenizer(str(directory), trust_remote_code=config.model.trust_remote_code)
        prompt = PromptSettings(template=settings["template"],
                                label_words=dict(zip(map(str, summary.label_names), settings["words"], strict=True)))  # fmt: skip
        classifier = cls._from(config, prompt, resolve_source(config.model), tokenizer, summary.label_names,
                               settings["shots"], batch_size)  # fmt: skip
        classifier.threshold = summary.threshold
        return classifier

    def export_merged(self, directory: Path) -> dict:
        raise LorabenchError(
            "export --merge applies to adapters; a prompt run trained none (export it without --merge)"
        )

    def export_onnx(self, directory: Path, quantize: str) -> dict:
        raise LorabenchError("export --format onnx does not cover prompt runs; export without --format")


def _read_settings(directory: Path) -> dict:
    settings = read_json(directory / SETTINGS_FILE)
    settings["shots"] = [(shot["text"], int(shot["label"])) for shot in settings["shots"]]
    return settings
