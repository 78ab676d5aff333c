"""Structured surgery is exact: a pruned model equals the dense model with those units masked."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.errors import ModelError, PolicyError
from autoprune.criteria import n_removed
from autoprune.models import get_adapter, load_model
from autoprune.surgery import encoder_weight_sparsity, prune_structured, prune_unstructured
from conftest import make_tiny_model, token_batch

ARCHS = ["bert", "distilbert", "roberta"]


_batch = token_batch


@pytest.fixture(params=ARCHS)
def tiny(request, tmp_path):
    path = make_tiny_model(tmp_path / request.param, request.param, layers=2, heads=4, hidden=32, ffn=64)
    model = load_model(str(path))
    model.eval()
    return model


@torch.no_grad()
def test_keeping_everything_leaves_outputs_unchanged(tiny):
    before = tiny(**_batch()).logits
    prune_structured(tiny, [[0, 1, 2, 3]] * 2, [list(range(64))] * 2)
    assert torch.equal(tiny(**_batch()).logits, before)


@torch.no_grad()
def test_pruned_equals_dense_with_units_masked(tiny):
    adapter = get_adapter(tiny)
    kept_heads = [[0, 2], [1, 2, 3]]
    kept_neurons = [list(range(0, 64, 2)), list(range(10, 50))]
    masked = copy.deepcopy(tiny)
    d = adapter.head_dim(masked)
    for parts, kh, kn in zip(adapter.layers(masked), kept_heads, kept_neurons):
        for h in range(4):
            if h not in kh:  # a head contributes only through its columns of the output projection
                parts.attn_out.weight[:, h * d:(h + 1) * d] = 0
        drop = [j for j in range(64) if j not in kn]
        parts.ffn_out.weight[:, drop] = 0
    prune_structured(tiny, kept_heads, kept_neurons)
    assert adapter.shape(tiny) == ([2, 3], [32, 40])
    torch.testing.assert_close(tiny(**_batch()).logits, masked(**_batch()).logits, rtol=1e-5, atol=1e-5)


def test_pruned_model_still_trains(tiny):
    prune_structured(tiny, [[1], [0, 3]], [[5, 6, 7], list(range(20))])
    tiny.train()
    out = tiny(**_batch(), labels=torch.tensor([0, 1, 0]))
    out.loss.backward()
    grads = [p.grad for p in tiny.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_never_removes_last_unit(tiny):
    with pytest.raises(PolicyError, match="keeping no heads"):
        prune_structured(tiny, [[], [0]], None)
    assert n_removed(4, 0.99) == 3 and n_removed(64, 0.5) == 32 and n_removed(12, 0.3) == 4


def test_unstructured_masks_are_exact_and_survive_training(tiny):
    adapter = get_adapter(tiny)
    names = {id(m): n for n, m in tiny.named_modules()}
    masks = {}
    for parts in adapter.layers(tiny):
        for lin in parts.linears():
            m = torch.ones_like(lin.weight)
            m.view(-1)[: m.numel() // 4] = 0
            masks[names[id(lin)]] = m
    prune_unstructured(tiny, masks)
    assert encoder_weight_sparsity(tiny) == pytest.approx(0.25, abs=1e-3)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    tiny.train()
    tiny(**_batch(), labels=torch.tensor([0, 1, 0])).loss.backward()
    opt.step()
    assert encoder_weight_sparsity(tiny) == pytest.approx(0.25, abs=1e-3)


def test_unsupported_architecture_names_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="unsupported architecture 'gpt2'; autoprune supports model_type bert, "
                                         "camembert, deberta-v2, distilbert"):
        load_model(str(tmp_path))


def test_missing_model_path_is_clear(tmp_path):
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(str(tmp_path / "nope"))


@torch.no_grad()
def test_dropped_layers_equal_dense_with_those_layers_skipped(tiny):
    from autoprune.surgery import drop_layers

    adapter = get_adapter(tiny)
    skipped = copy.deepcopy(tiny)

    def identity(module, args, kwargs, output):  # layer 0 of the dense copy passes its input through
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    adapter.layer_modules(skipped)[0].register_forward_hook(identity, with_kwargs=True)
    drop_layers(tiny, [0])
    assert len(adapter.layer_modules(tiny)) == 1 and adapter.depth(tiny.config) == 1
    torch.testing.assert_close(tiny(**_batch()).logits, skipped(**_batch()).logits)
    with pytest.raises(PolicyError, match="removes all 1 encoder layers"):
        drop_layers(tiny, [0])
    with pytest.raises(PolicyError, match=r"outside \[0, 1\)"):
        drop_layers(tiny, [3])
