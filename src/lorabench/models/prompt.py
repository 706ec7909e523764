"""The `prompt` kind (`model.method: prompt`): a decoder answers a prompt, and each class scores the log-probability
of its label word after it. The decoder never trains: "do I need to train at all?" answered on the user's own data.

With `prompt.shots: k`, k labelled training rows per class (seeded, never validation or test rows) are put before
each text, each followed by its class's word. A decoder prefers some words whatever the text (SmolLM2 answers "no"
to every tweet), so one offset per class is fitted to the scores of `prompt.calibration_rows` other training rows;
class probabilities are the softmax of the words' log-probabilities plus the offsets, and a two-class run then gets
its decision threshold calibrated on validation like every run. The run stores its prompt, shots, words and offsets
(JSON); the decoder loads from the model's source as LoRA runs load their base.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
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


def choose_calibration_rows(train: pd.DataFrame, shots: list[tuple[str, int]], rows: int, seed: int) -> pd.DataFrame:
    """`rows` training rows drawn with `seed`, none with a shot's text (its answer stands in the prompt)."""
    others = train[~train["text"].isin({text for text, _ in shots})]
    return others.sample(n=min(rows, len(others)), random_state=seed)


def fit_offsets(scores: np.ndarray, labels: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Offsets b (b[0] = 0) minimising the class-weighted cross-entropy of softmax(scores + b), a convex problem in
    K-1 numbers. scikit-learn's logistic regression cannot hold the scores' coefficients at one, so scipy's L-BFGS
    solves it; the bounds keep a class missing from the rows at a finite offset."""
    from scipy.optimize import minimize

    weights = np.asarray(class_weights, dtype=np.float64)[labels]
    onehot = np.eye(scores.shape[1])[labels]

    def loss(free: np.ndarray) -> tuple[float, np.ndarray]:
        shifted = scores + np.concatenate([[0.0], free])
        log_p = shifted - shifted.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        gradient = (weights[:, None] * (np.exp(log_p) - onehot)).sum(0)[1:]
        return -(weights * (log_p * onehot).sum(1)).sum() / weights.sum(), gradient / weights.sum()

    free = minimize(loss, np.zeros(scores.shape[1] - 1), jac=True, method="L-BFGS-B",
                    bounds=[(-50.0, 50.0)] * (scores.shape[1] - 1)).x  # fmt: skip
    return np.concatenate([[0.0], free])


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
    offsets: list[float] | None = None  # added to the classes' scores; None = raw log-probabilities
    # The shots' token ids and the decoder's keys and values for them, read at the first call and kept: a served
    # text would otherwise pay for the whole shots prefix again (8 shots of SmolLM2: 3.3 s a text instead of 0.23,
    # bench/results/prompt_inference_cost.json).
    _shots_read: tuple[list[int], Any] | None = field(default=None, init=False, repr=False, compare=False)

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

    def shots_text(self) -> str:
        """The shots, each answered with its class's word: the part of the prompt every text shares."""
        return "".join(f"{self.template.format(text=shot)} {self.words[label]}\n\n" for shot, label in self.shots)

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt's tokens: the shots tokenized once (with the tokenizer's special tokens), then the text's."""
        shots_ids = self._shots_ids()
        return shots_ids + self._own_ids(text, first=not shots_ids)

    def _shots_ids(self) -> list[int]:
        return self.tokenizer(self.shots_text())["input_ids"] if self.shots else []

    def _own_ids(self, text: str, first: bool, room: int | None = None) -> list[int]:
        """The text's prompt, with the special tokens when nothing comes before it, cut from the left to `room`
        tokens when given (the text's end and the question stay)."""
        ids = self.tokenizer(self.template.format(text=text), add_special_tokens=first)["input_ids"]
        return ids[-room:] if room else ids

    def word_log_probabilities(self, texts: list[str]) -> np.ndarray:
        """log P(word of class c | prompt of text), summed over the word's tokens: shape (len(texts), classes).

        The shots are the same before every text, so the decoder reads them once and each batch continues from
        their cached keys and values; when every word is one token, one pass per text reads all the classes."""
        words = [self.tokenizer(f" {word}", add_special_tokens=False)["input_ids"] for word in self.words]
        shots_ids, shots_cache = self._read_shots()
        room = self.max_length - len(shots_ids) - max(map(len, words))
        if room < 1:
            raise LorabenchError(
                f"the {len(self.shots)} shots take {len(shots_ids)} tokens, train.max_length is {self.max_length}: "
                f"raise train.max_length or lower prompt.shots"
            )
        one_pass = all(len(word) == 1 for word in words)
        pairs = [(row, None) for row in range(len(texts))] if one_pass else [
            (row, c) for row in range(len(texts)) for c in range(len(words))]  # fmt: skip
        scores = np.zeros((len(texts), len(words)), dtype=np.float64)
        with progress_bar("prompt", len(pairs)) as bar, torch.inference_mode():
            for start in range(0, len(pairs), self.batch_size):
                batch = pairs[start : start + self.batch_size]
                sequences = [self._own_ids(texts[row], not shots_ids, room) + (words[c] if c is not None else [])
                             for row, c in batch]  # fmt: skip
                # where each scored token is predicted: the prompt's last position for every class's one-token
                # word, else the position before each of the word's tokens
                read_at = [[len(sequence) - 1] if c is None else list(range(len(sequence) - len(words[c]) - 1,
                           len(sequence) - 1)) for sequence, (_, c) in zip(sequences, batch, strict=True)]  # fmt: skip
                log_probs = self._log_softmax(sequences, read_at, shots_cache)
                for i, (row, c) in enumerate(batch):
                    if c is None:
                        scores[row] = log_probs[i, 0, [word[0] for word in words]].cpu().numpy()
                    else:
                        scores[row, c] = log_probs[i, range(len(words[c])), words[c]].sum().item()
                bar.advance(len(batch))
        return scores

    def _read_shots(self) -> tuple[list[int], Any]:
        """The shots' token ids and the decoder's cached keys and values for them (None without shots)."""
        if self._shots_read is None:
            shots_ids, cache = self._shots_ids(), None
            if shots_ids:
                with torch.inference_mode():
                    ids = torch.tensor([shots_ids], device=self.model.device)
                    cache = self.model(ids, use_cache=True).cache
            self._shots_read = (shots_ids, cache)
        return self._shots_read

    def _log_softmax(self, sequences: list[list[int]], read_at: list[list[int]], shots_cache) -> torch.Tensor:
        """Log-probabilities over the vocabulary at the `read_at` positions of each sequence (right-padded; rows
        with fewer positions repeat their last), each read after the shots' cached keys and values when there are
        shots. Only those positions go through the vocabulary projection, the costliest layer of a small decoder."""
        device = self.model.device
        inputs = {k: v.to(device) for k, v in pad_batch(sequences, self.tokenizer.pad_token_id, "right").items()}
        if shots_cache is not None:
            cache = copy.deepcopy(shots_cache)  # the forward pass appends to the cache it is given
            cache.batch_repeat_interleave(len(sequences))
            mask = inputs["attention_mask"]
            before = torch.ones(len(sequences), cache.get_seq_length(), dtype=mask.dtype, device=device)
            inputs |= {"cache": cache, "attention_mask": torch.cat([before, mask], dim=1)}
        width = max(map(len, read_at))
        keep = torch.tensor([positions + positions[-1:] * (width - len(positions)) for positions in read_at])
        return self.model(**inputs, logits_to_keep=keep.to(device)).logits.float().log_softmax(dim=-1)

    def calibrate(self, texts: list[str], labels: np.ndarray, class_weights: np.ndarray) -> None:
        """Fit the offsets on labelled training rows; the decoder does not change."""
        self.offsets = fit_offsets(self.word_log_probabilities(texts), labels, class_weights).tolist()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Softmax over the classes' word log-probabilities plus their offsets, shape (len(texts), classes)."""
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
        scores = self.word_log_probabilities(texts) + np.asarray(self.offsets or 0.0)
        scores -= scores.max(axis=1, keepdims=True)
        return np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)

    def save(self, run_dir: str | Path) -> None:
        """The template, words and shots (JSON) and the tokenizer into the run's prompt/ directory."""

        def build(directory: Path) -> None:
            settings = {"template": self.template, "words": self.words, "label_names": self.label_names,
                        "shots": [{"text": text, "label": label} for text, label in self.shots],
                        "offsets": self.offsets}  # fmt: skip
            (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False), "utf-8")
            self.tokenizer.save_pretrained(directory)

        replace_dir(build, Path(run_dir) / MODEL_DIR)

    def read_saved(self, run_dir: str | Path) -> PromptClassifier:
        """This decoder with the prompt read back from the run's files (records.saved_copy checks they agree)."""
        settings = _read_settings(RunDir(run_dir).file(MODEL_DIR))
        return replace(self, template=settings["template"], words=settings["words"], shots=settings["shots"],
                       offsets=settings["offsets"])  # fmt: skip

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
        classifier.threshold, classifier.offsets = summary.threshold, settings["offsets"]
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
    settings.setdefault("offsets", None)  # runs from before the offsets
    return settings
