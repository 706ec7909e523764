"""Packed (padding-free) batches give the padded path's logits and gradients, per architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorabench.core.config import LoraSettings
from lorabench.core.errors import LorabenchError
from lorabench.models.lora import adapter_merged_on_cpu, add_lora
from lorabench.models.packing import batch_logits, can_pack, choose_attention, pack


def _classifier(directory_or_config, attention: str | None = None):
    """A LoRA-wrapped 2-class classifier whose adapter is non-zero, so LoRA takes part in the comparison."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    if isinstance(directory_or_config, (str, bytes)) or hasattr(directory_or_config, "is_dir"):
        base = AutoModelForSequenceClassification.from_pretrained(directory_or_config, num_labels=2)
    else:
        base = AutoModelForSequenceClassification.from_config(directory_or_config)
    if base.config.pad_token_id is None:
        base.config.pad_token_id = base.config.eos_token_id  # pad = eos, as lorabench sets it for decoders
    model = add_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=None))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    if attention:
        model.get_base_model().set_attn_implementation(attention)
    return model.eval()


def _sequences(vocab_size: int, pad_id: int, seed: int = 0) -> list[list[int]]:
    """Rows of very different lengths (1 to 40 tokens), none of them padding."""
    rng = np.random.default_rng(seed)
    ids = [i for i in range(3, vocab_size) if i != pad_id]
    return [rng.choice(ids, size=length).tolist() for length in (7, 1, 40, 12, 3, 25, 40, 9)]


def _tiny_bert():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )


def _model(kind, tiny_models, attention):
    return _classifier(_tiny_bert() if kind == "bert" else tiny_models[kind], attention)


@pytest.mark.parametrize(
    ("kind", "attention"),
    [(kind, attention) for kind in ("roberta", "bert", "llama", "mistral") for attention in ("eager", "sdpa")]
    + [("mpnet", "eager")],  # MPNet has eager attention only
)
def test_packed_logits_equal_padded_logits(kind, attention, tiny_models):
    model = _model(kind, tiny_models, attention)
    pad_id = model.config.pad_token_id
    sequences = _sequences(model.config.vocab_size, pad_id)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        padded = batch_logits(model, sequences, pad_id, "right", cpu, packed=False)
        packed = batch_logits(model, sequences, pad_id, "right", cpu, packed=True)
        # each row alone (no padding at all) is the ground truth for both
        alone = torch.cat([batch_logits(model, [seq], pad_id, "right", cpu) for seq in sequences])
    assert packed.shape == (len(sequences), 2)
    assert padded.abs().max() > 1e-3  # the logits are not trivially zero
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["roberta", "llama"])
def test_packed_logits_match_under_bf16_autocast(kind, tiny_models):
    model = _model(kind, tiny_models, None)
    choose_attention(model)
    pad_id = model.config.pad_token_id
    sequences = _sequences(model.config.vocab_size, pad_id, seed=1)
    cpu = torch.device("cpu")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded = batch_logits(model, sequences, pad_id, "right", cpu).float()
        packed = batch_logits(model, sequences, pad_id, "right", cpu, packed=True).float()
    # bf16 keeps 8 bits of mantissa: logits of order 1 agree to a few hundredths
    torch.testing.assert_close(packed, padded, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("kind", ["roberta", "mpnet", "llama"])
def test_packed_gradients_equal_padded_gradients(kind, tiny_models):
    model = _model(kind, tiny_models, None)
    choose_attention(model)
    pad_id = model.config.pad_token_id
    sequences = _sequences(model.config.vocab_size, pad_id, seed=2)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = []
    for packed in (False, True):
        model.zero_grad()
        logits = batch_logits(model, sequences, pad_id, "right", torch.device("cpu"), packed=packed)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        gradients.append([p.grad.clone() for p in trainable])
    assert sum(float(g.abs().sum()) for g in gradients[0]) > 0
    for padded_grad, packed_grad in zip(*gradients, strict=True):
        torch.testing.assert_close(packed_grad, padded_grad, atol=1e-5, rtol=1e-4)


def test_decoder_pools_the_last_token_that_is_not_padding(tiny_models):
    model = _model("llama", tiny_models, "sdpa")
    pad_id = model.config.pad_token_id
    # a text ending in eos (= pad): the padded path's pooling skips it, and so must the packed one
    sequences = [[5, 6, 7, pad_id], [8, 9], [10, 11, 12, 13, 14]]
    with torch.inference_mode():
        padded = batch_logits(model, sequences, pad_id, "right", torch.device("cpu"))
        packed = batch_logits(model, sequences, pad_id, "right", torch.device("cpu"), packed=True)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    assert pack(sequences, model, pad_id)["pooled"].tolist() == [2, 5, 10]


def test_pack_layout_restarts_positions_per_sequence(tiny_models):
    roberta = _model("roberta", tiny_models, "eager")
    packed = pack([[5, 6, 7], [8, 9]], roberta, roberta.config.pad_token_id)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    # RoBERTa counts positions from padding_idx + 1 = 2
    assert packed["position_ids"].tolist() == [[2, 3, 4, 2, 3]]
    assert packed["pooled"].tolist() == [0, 3]
    block = packed["attention_mask"][0, 0].int().tolist()
    assert block == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]


def test_attention_is_chosen_per_architecture(tiny_models):
    roberta, llama = _model("roberta", tiny_models, None), _model("llama", tiny_models, None)
    assert choose_attention(roberta) == "eager" and roberta.config._attn_implementation == "eager"
    assert choose_attention(llama) == "sdpa" and llama.config._attn_implementation == "sdpa"


def test_unsupported_architecture_is_refused_in_one_line():
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    model = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    )
    assert not can_pack(model)
    with pytest.raises(LorabenchError, match="packed batches support .* not distilbert"):
        pack([[5, 6]], model, 0)


@pytest.mark.parametrize("kind", ["roberta", "bert", "llama"])
def test_mean_pooled_packed_logits_equal_padded_and_differ_from_the_own_token(kind, tiny_models):
    model = _model(kind, tiny_models, "eager")
    pad_id = model.config.pad_token_id
    sequences = _sequences(model.config.vocab_size, pad_id, seed=3)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        padded = batch_logits(model, sequences, pad_id, "right", cpu, pooling="mean")
        packed = batch_logits(model, sequences, pad_id, "right", cpu, packed=True, pooling="mean")
        alone = torch.cat([batch_logits(model, [seq], pad_id, "right", cpu, pooling="mean") for seq in sequences])
        own = batch_logits(model, sequences, pad_id, "right", cpu)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)
    assert (own - padded).abs().max() > 1e-3


def test_scoring_merged_on_a_cpu_gives_the_unmerged_logits_and_leaves_the_base_weights_bit_for_bit(tiny_models):
    """Merged scoring must not change what the model computes, nor leave rounding behind for training to inherit
    (exact resume compares runs that scored between epochs with runs that did not)."""
    model = _classifier(tiny_models["roberta"])
    sequences = _sequences(model.config.vocab_size, model.config.pad_token_id)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    cpu = torch.device("cpu")
    with torch.no_grad():
        unmerged = batch_logits(model, sequences, model.config.pad_token_id, "right", cpu, False)
        with adapter_merged_on_cpu(model, cpu):
            merged = batch_logits(model, sequences, model.config.pad_token_id, "right", cpu, False)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())
    assert not any(getattr(module, "merged", False) for module in model.modules())
