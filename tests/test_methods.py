"""`model.method`: the LoRA variants peft ships (DoRA, rsLoRA, PiSSA, LoRA+) and full fine-tuning, each a real
implementation on a tiny BERT: what each trains, what it saves, and that every one answers the same after
reloading (the round-trip check of tests/test_round_trip.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lorabench.core.config import RunConfig
from lorabench.core.storage import RunDir
from test_round_trip import DATA_FLAGS, _lora, assert_round_trip

METHODS = ["lora", "dora", "rslora", "pissa", "loraplus", "full"]


@pytest.fixture(scope="module")
def method_runs(tiny_bert, tmp_path_factory) -> dict:
    """Builds each method's run on the binary set once, on first use."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("methods")
    data = Path(__file__).parent / "data" / "binary"

    def get(method: str, cli) -> Path:
        if method not in built:
            extra = ["--full-lr", "1e-3"] if method == "full" else []
            built[method] = _lora(
                cli, root / method, data, "binary", {"encoder": tiny_bert}, "--method", method, *extra
            )
        return built[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_each_method_records_itself_and_answers_the_same_after_reloading(method, method_runs, cli, tmp_path):
    run = method_runs(method, cli)
    summary = RunDir(run).summary()
    assert (summary.method, summary.kind) == (method, "full" if method == "full" else "lora")
    assert_round_trip(run, summary.kind, "binary", cli, tmp_path)


def test_variants_save_peft_adapters_with_their_own_options(method_runs, cli, tiny_bert):
    configs = {
        m: json.loads((method_runs(m, cli) / "adapter" / "adapter_config.json").read_text()) for m in METHODS[:5]
    }
    assert configs["dora"]["use_dora"] and not configs["lora"]["use_dora"]
    assert configs["rslora"]["use_rslora"] and not configs["lora"]["use_rslora"]
    # PiSSA is saved converted to plain LoRA on the original weights: twice the rank, a standard initialisation
    assert configs["pissa"]["r"] == 2 * configs["lora"]["r"] and configs["pissa"]["init_lora_weights"] is True
    dora_weights = load_file(method_runs("dora", cli) / "adapter" / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in dora_weights)


def test_full_changes_the_base_weights_and_lora_methods_do_not(method_runs, cli, tiny_bert):
    base = load_file(tiny_bert / "model.safetensors")
    name = next(key for key in base if key.endswith("encoder.layer.0.attention.self.query.weight"))
    full = load_file(method_runs("full", cli) / "model" / "model.safetensors")
    trained = next(value for key, value in full.items() if key.endswith(name.split("bert.")[-1]))
    assert (trained - base[name]).abs().max() > 1e-4
    assert not (method_runs("full", cli) / "adapter").exists()
    lora = load_file(method_runs("lora", cli) / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in key or "classifier" in key for key in lora)  # the adapter and head, no base weight


def test_setfit_tunes_the_encoder_and_keeps_it_in_the_run_without_pickle(tiny_bert, cli, tmp_path):
    from test_round_trip import _setfit

    run = _setfit(cli, tmp_path / "run", Path(__file__).parent / "data" / "binary", "binary", {"encoder": tiny_bert})
    summary = RunDir(run).summary()
    assert (summary.method, summary.kind, summary.trainable_percent, summary.lr) == ("setfit", "setfit", 100.0, 1e-3)
    base = load_file(tiny_bert / "model.safetensors")
    name = next(key for key in base if key.endswith("encoder.layer.0.attention.self.query.weight"))
    tuned = load_file(run / "setfit" / "encoder" / "model.safetensors")
    trained = next(value for key, value in tuned.items() if key.endswith(name.split("bert.")[-1]))
    assert (trained - base[name]).abs().max() > 1e-4  # the pairs moved the encoder; a probe's stays as loaded
    assert (run / "setfit" / "head.safetensors").is_file()
    assert not [path for path in run.rglob("*") if path.suffix in {".pkl", ".pickle", ".bin", ".pt", ".joblib"}]


@pytest.mark.parametrize(
    ("precision", "recorded"),
    [pytest.param("bf16", "bfloat16", marks=pytest.mark.slow), pytest.param("auto", "fp32", marks=pytest.mark.slow),
     ("fp16", None)],
)  # fmt: skip
def test_setfit_tunes_the_encoder_in_the_precision_asked_for(tiny_bert, cli, tmp_path, precision, recorded):
    """`--precision` reaches SetFit's trainer: the tuning's linear layers compute in bf16 when asked, `auto` keeps
    setfit's fp32 (bf16 cost it 0.03 val F1 on the tweets) even on a CPU where LoRA would train in bf16, the record
    says which, and fp16 without a CUDA GPU is refused in one line before anything is written."""
    from test_round_trip import DATA_FLAGS

    dtypes = set()

    def note_dtype(module, _inputs, output):
        if isinstance(module, torch.nn.Linear):
            dtypes.add(output.dtype)

    flags = ["--model", tiny_bert, "--method", "setfit", "--max-length", "64", "--epochs", "1", "--full-lr", "1e-3",
             "--set", "train.setfit_pairs=1", "--precision", precision, *DATA_FLAGS["binary"]]  # fmt: skip
    hook = torch.nn.modules.module.register_module_forward_hook(note_dtype)
    try:
        result = cli("train", "--data", Path(__file__).parent / "data" / "binary", "--out", tmp_path / "run", *flags)
    finally:
        hook.remove()
    if recorded is None:
        assert (result.code, result.stderr.strip().count("\n")) == (2, 0), result
        assert "--precision fp16 needs a CUDA GPU" in result.stderr and not (tmp_path / "run").exists()
        return
    assert result.code == 0, result.stderr
    assert (torch.bfloat16 in dtypes) == (precision == "bf16")  # scoring stays in fp32 either way
    assert RunDir(tmp_path / "run").summary().precision == recorded


def test_loraplus_trains_b_at_a_higher_lr(tiny_bert):
    from lorabench.api import resolve_config
    from lorabench.models.lora import LORAPLUS_LR_RATIO, optimizer_for
    from lorabench.training.preparation import prepare

    data = str(Path(__file__).parent / "data" / "binary")
    config = resolve_config(str(tiny_bert), overrides={"model": {"method": "loraplus"}, "data": {"source": data}})
    model = prepare(config).model
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = optimizer_for("loraplus", model, trainable, 1e-3, 0.0).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: group["lr"] for group in groups for p in group["params"]}
    assert all(lr == pytest.approx(1e-3 * LORAPLUS_LR_RATIO) for n, lr in lr_of.items() if "lora_B" in n)
    assert all(lr == pytest.approx(1e-3) for n, lr in lr_of.items() if "lora_A" in n)
    assert {n for n in lr_of} == {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_method_on_a_kind_without_a_pretrained_model_is_refused(cli, tmp_path):
    data = Path(__file__).parent / "data" / "binary"
    result = cli("train", "--model", "tfidf", "--method", "dora", "--data", data, "--out", tmp_path / "run")
    assert result.code == 2
    assert "method dora needs a pretrained model" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_run_config_names_the_kind_each_method_trains():
    assert RunConfig().kind == "lora" and RunConfig(model={"method": "full"}).kind == "full"
    assert RunConfig(model={"method": "dora"}).method == "dora"
    assert RunConfig(model={"kind": "tfidf"}).method is None


@pytest.fixture(scope="module")
def probe_run(tiny_bert, tmp_path_factory) -> Path:
    from lorabench.api import resolve_config, train

    out = tmp_path_factory.mktemp("probe") / "run"
    data = Path(__file__).parent / "data" / "four_class"
    config = resolve_config(
        str(tiny_bert),
        overrides={"model": {"method": "probe"}, "train": {"max_length": 64},
                   "data": {"source": str(data), "label_column": "topic", "text_template": "{headline}. {body}"}},
    )  # fmt: skip
    train(config, out)
    return out


def test_a_probe_never_updates_the_encoder_and_stores_only_its_head(probe_run, tiny_bert):
    from lorabench.models.registry import load_classifier

    probe = load_classifier(probe_run)
    base = load_file(tiny_bert / "model.safetensors")
    encoder = {name: value for name, value in probe.encoder.state_dict().items()}
    shared = [name for name in base if name.removeprefix("bert.") in encoder]
    assert shared and all(torch.equal(base[name], encoder[name.removeprefix("bert.")]) for name in shared)
    head = load_file(probe_run / "probe" / "head.safetensors")
    assert set(head) == {"coef", "intercept"} and head["coef"].shape == (4, 32)
    summary = RunDir(probe_run).summary()
    assert summary.trainable_params == 4 * 32 + 4 and summary.method == "probe"
    assert any("probe: C=" in note for note in summary.notes)


def test_a_probe_embeds_each_text_set_once(probe_run, tiny_bert, monkeypatch, tmp_path):
    """The recipe's cache: training the same probe again embeds nothing (model and texts are the same)."""
    from lorabench.api import train
    from lorabench.models.probe import ProbeClassifier

    calls = []
    original = ProbeClassifier._embed
    monkeypatch.setattr(
        ProbeClassifier, "_embed", lambda self, texts: calls.append(len(texts)) or original(self, texts)
    )
    train(RunDir(probe_run).config(), tmp_path / "again")
    assert calls == []
    again = RunDir(tmp_path / "again").summary()
    assert again.val == RunDir(probe_run).summary().val


def test_the_grid_crosses_models_with_methods_and_keeps_named_members(tiny_bert):
    from lorabench.core.config import resolve_config
    from lorabench.workflows.members import grid

    members = grid(["tfidf", str(tiny_bert), "minilm:full"], ["probe", "lora"], lambda model: resolve_config(model))
    assert members == ["tfidf", f"{tiny_bert}:probe", f"{tiny_bert}:lora", "minilm:full"]


@pytest.mark.parametrize(
    ("models", "methods", "message"),
    [
        (
            "tfidf:lora",
            None,
            "model tfidf:lora: invalid config value for 'model': method lora needs a pretrained model",
        ),
        ("tfidf,minilm:probe", "probe,foo", "unknown method 'foo' in --methods"),
        ("minilm:prob", None, "unknown method 'prob' in 'minilm:prob'"),
    ],
)
def test_a_combination_that_cannot_work_is_refused_before_anything_trains(models, methods, message, cli, tmp_path):
    data = Path(__file__).parent / "data" / "binary"
    grid = ["--methods", methods] if methods else []
    result = cli("compare", "--models", models, *grid, "--data", data, "--out", tmp_path / "out")
    assert result.code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_compare_runs_the_grid_with_one_row_per_model_and_method(tiny_bert, cli, tmp_path, in_process):
    data = Path(__file__).parent / "data" / "four_class"
    (tmp_path / "shared.yaml").write_text("train: {max_length: 48, lr: 0.01}\n")
    result = cli("compare", "--models", f"tfidf,{tiny_bert}", "--methods", "probe,lora", "--data", data,
                 *DATA_FLAGS["four_class"], "--epochs", "1", "--config", tmp_path / "shared.yaml",
                 "--out", tmp_path / "out")  # fmt: skip
    assert result.code == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(table["model"]) == sorted(["tfidf", f"{tiny_bert}:probe", f"{tiny_bert}:lora"])
    assert (table["status"] == "ok").all()
    methods = {RunDir(path.parent).summary().method for path in (tmp_path / "out" / "runs").glob("*/summary.json")}
    assert methods == {None, "probe", "lora"}
    assert table["method"].fillna("").tolist() == [{"tfidf": ""}.get(m, m.rpartition(":")[2]) for m in table["model"]]
    # the report's grid: the model's row with a cell per method, tfidf's under —
    html = (tmp_path / "out" / "report.html").read_text()
    grid = html[html.index('<table id="grid">') : html.index("</table>", html.index('<table id="grid">'))]
    assert "<th>probe</th><th>lora</th><th>—</th>" in grid and f"<td>{tiny_bert}</td>" in grid
    assert grid.count('class="best"') == 1 and "★ " in grid
    assert "Models × methods: val macro-F1" in (tmp_path / "out" / "results.md").read_text()
    assert "Models × methods: val macro-F1" in result.stdout
    assert {"cost_train_seconds.png", "cost_train_memory.png"} <= {
        p.name for p in (tmp_path / "out" / "charts").iterdir()
    }


@pytest.fixture(scope="module")
def prompt_run(tiny_causal_lm, tmp_path_factory) -> Path:
    from lorabench.api import resolve_config, train

    out = tmp_path_factory.mktemp("prompt") / "run"
    config = resolve_config(
        str(tiny_causal_lm),
        overrides={"model": {"method": "prompt"}, "prompt": {"label_words": {0: "calm", 1: "fire"}, "shots": 2},
                   "data": {"source": str(Path(__file__).parent / "data" / "binary")}, "train": {"max_length": 2048}},
    )  # fmt: skip
    train(config, out)
    return out


def _by_hand(classifier, prompt: list[int]) -> list[float]:
    """One forward pass of the whole prompt + word per class (no cache), summing log P(word token | before)."""
    row = []
    for word in classifier.words:
        ids = classifier.tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = classifier.model(input_ids=torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
        row.append(sum(logits[len(prompt) - 1 + j, token].item() for j, token in enumerate(ids)))
    return row


def test_prompt_scores_are_the_label_words_log_probabilities(prompt_run):
    """The scores against a hand computation; the prompt is the shots tokenized once, then the text's own."""
    from dataclasses import replace

    from lorabench.models.registry import load_classifier

    classifier = load_classifier(prompt_run)
    assert classifier.words == ["calm", "fire"] and len(classifier.shots) == 4
    texts = ["A storm near the city tonight.", "Coffee and music this weekend."]
    tokenizer, expected = classifier.tokenizer, []
    for text in texts:
        prompt = tokenizer(classifier.shots_text())["input_ids"]
        prompt += tokenizer(classifier.template.format(text=text), add_special_tokens=False)["input_ids"]
        assert classifier.prompt_ids(text) == prompt
        expected.append(_by_hand(classifier, prompt))
    np.testing.assert_allclose(classifier.word_log_probabilities(texts), expected, atol=1e-4)
    scores = np.array(expected) + np.array(classifier.offsets)
    softmax = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(classifier.predict_proba(texts), softmax / softmax.sum(1, keepdims=True), atol=1e-4)
    # words of one token each: one pass per text reads both classes
    one_token = [
        w
        for w in ("the", "a", "and", "of", "to", "in")
        if len(tokenizer(f" {w}", add_special_tokens=False)["input_ids"]) == 1
    ]
    short = replace(classifier, words=one_token[:2])
    np.testing.assert_allclose(
        short.word_log_probabilities(texts), [_by_hand(short, short.prompt_ids(text)) for text in texts], atol=1e-4
    )
    # the shots are read once per classifier, not at every call: a served text pays for its own tokens only
    served, reads = replace(classifier), []
    hook = served.model.register_forward_pre_hook(
        lambda _, args, kwargs: reads.append("cache" not in kwargs), with_kwargs=True
    )
    try:
        answers = [served.predict_proba([text]) for text in texts + texts]
    finally:
        hook.remove()
    assert reads.count(True) == 1 and len(reads) == 5
    np.testing.assert_allclose(np.vstack(answers), np.vstack([softmax / softmax.sum(1, keepdims=True)] * 2), atol=1e-4)


def test_prompt_shots_stay_whole_and_a_window_too_small_for_them_is_refused(prompt_run):
    """A long text is cut from the left after the shots, never the shots; a window the shots alone fill is refused
    in one line instead of scoring prompts whose examples were cut away."""
    from dataclasses import replace

    from lorabench.core.errors import LorabenchError
    from lorabench.models.registry import load_classifier

    classifier = load_classifier(prompt_run)
    tokenizer = classifier.tokenizer
    shots = tokenizer(classifier.shots_text())["input_ids"]
    longest_word = max(len(tokenizer(f" {w}", add_special_tokens=False)["input_ids"]) for w in classifier.words)
    long_text = "storm " * 400
    own = tokenizer(classifier.template.format(text=long_text), add_special_tokens=False)["input_ids"]
    room = 20
    narrow = replace(classifier, max_length=len(shots) + room + longest_word)
    expected = _by_hand(classifier, shots + own[-room:])  # the text's end and the question stay
    np.testing.assert_allclose(narrow.word_log_probabilities([long_text])[0], expected, atol=1e-4)
    with pytest.raises(LorabenchError, match=r"^the 4 shots take \d+ tokens, train.max_length is 10: raise"):
        replace(classifier, max_length=10).word_log_probabilities(["a text"])


def test_prompt_offsets_minimise_the_class_weighted_cross_entropy():
    """A decoder that prefers the word of class 0 by 3 nats for every text: offsets that cancel the preference
    when the classes weigh the same (balanced weights, or balanced rows), and the rows' odds when they do not."""
    from lorabench.models.prompt import fit_offsets

    scores = np.tile([0.0, -3.0], (400, 1))
    labels = np.array([0, 1] * 200)
    np.testing.assert_allclose(fit_offsets(scores, labels, np.ones(2)), [0.0, 3.0], atol=1e-4)
    labels = np.array([0, 0, 0, 1] * 100)
    np.testing.assert_allclose(fit_offsets(scores, labels, np.ones(2)), [0.0, 3.0 + np.log(1 / 3)], atol=1e-4)
    np.testing.assert_allclose(fit_offsets(scores, labels, np.array([400 / 600, 400 / 200])), [0.0, 3.0], atol=1e-4)
    three = fit_offsets(np.tile([0.0, -1.0, -2.0], (300, 1)), np.repeat([0, 1, 2], 100), np.ones(3))
    np.testing.assert_allclose(three, [0.0, 1.0, 2.0], atol=1e-4)


def test_prompt_offsets_are_fitted_on_training_rows_that_are_not_shots(prompt_run):
    """The offsets come from training rows other than the shots (never validation), are recorded, and reload."""
    from lorabench.data.sources import load_splits
    from lorabench.models import prompt
    from lorabench.models.registry import load_classifier

    config = RunDir(prompt_run).config()
    splits = load_splits(config.data)
    saved = json.loads((prompt_run / "prompt" / "prompt.json").read_text())
    shots = [(shot["text"], shot["label"]) for shot in saved["shots"]]
    rows = prompt.choose_calibration_rows(splits.train, shots, config.prompt.calibration_rows, config.train.seed)
    assert len(rows) == min(config.prompt.calibration_rows, len(splits.train) - len(shots)) > 0
    assert not set(rows["text"]) & ({text for text, _ in shots} | set(splits.validation["text"]))
    classifier = load_classifier(prompt_run)
    assert classifier.offsets == saved["offsets"] and saved["offsets"][0] == 0.0 and saved["offsets"][1] != 0.0
    scores = classifier.word_log_probabilities(rows["text"].tolist())
    weights = RunDir(prompt_run).summary().class_weights
    np.testing.assert_allclose(classifier.offsets, prompt.fit_offsets(scores, rows["label"].to_numpy(), weights),
                               atol=1e-4)  # fmt: skip


def test_prompt_shots_are_training_rows_per_class_and_recorded(prompt_run):
    from lorabench.data.sources import load_splits

    config = RunDir(prompt_run).config()
    splits = load_splits(config.data)
    saved = json.loads((prompt_run / "prompt" / "prompt.json").read_text())
    shots = [(shot["text"], shot["label"]) for shot in saved["shots"]]
    assert sorted(label for _, label in shots) == [0, 0, 1, 1]
    train_rows = set(zip(splits.train["text"], splits.train["label"], strict=True))
    assert all(shot in train_rows for shot in shots)
    assert not {text for text, _ in shots} & set(splits.validation["text"])
    summary = RunDir(prompt_run).summary()
    assert summary.method == "prompt" and summary.trainable_params == 0 and summary.threshold is not None


def test_prompt_on_an_encoder_is_refused_before_anything_runs(tiny_bert, cli, tmp_path):
    data = Path(__file__).parent / "data" / "binary"
    result = cli("train", "--model", tiny_bert, "--method", "prompt", "--data", data, "--out", tmp_path / "run")
    assert result.code == 2 and "prompt needs a decoder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    result = cli("compare", "--models", f"tfidf,{tiny_bert}:prompt", "--data", data, "--out", tmp_path / "out")
    assert result.code == 2 and "prompt needs a decoder" in result.stderr and not (tmp_path / "out").exists()
