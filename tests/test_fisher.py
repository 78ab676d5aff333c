"""The fisher criterion: per-sample squared mask gradients, checked against an independent reference."""

from __future__ import annotations

import pytest
import torch

from autoprune.criteria import criterion_names, get_criterion
from autoprune.errors import PolicyError
from autoprune.models import get_adapter, load_model
from conftest import make_tiny_model

HEAD_DIM = 4  # hidden 16 / 4 heads


def _batches() -> list[dict[str, torch.Tensor]]:
    """Two batches with padding (rows of different lengths) and mixed labels."""
    g = torch.Generator().manual_seed(0)
    out = []
    for lengths, labels in (([6, 4, 5], [0, 1, 1]), ([3, 6], [1, 0])):
        ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, n in enumerate(lengths):
            ids[r, :n] = torch.randint(5, 30, (n,), generator=g)
            ids[r, 0] = 2  # [CLS]
            mask[r, :n] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(labels)})
    return out


def _model(path, model_type: str = "bert", **kw):
    """A tiny model with weights large enough (std 0.3) that the loss depends visibly on every unit."""
    m = load_model(str(make_tiny_model(path, model_type, **kw)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.3)
    return m


def _reference(model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Sample by sample (batch of one, padding stripped): a mask ``m`` scaling the input columns of a
    projection ``W`` gives ``dL/dm_u = sum over u's columns c and all rows r of W[r, c] * dL/dW[r, c]``."""
    model.eval()
    layers = get_adapter(model).layers(model)
    heads = [torch.zeros(p.num_heads, dtype=torch.float64) for p in layers]
    neurons = [torch.zeros(p.num_neurons, dtype=torch.float64) for p in layers]
    for batch in batches:
        for r in range(batch["labels"].shape[0]):
            n = int(batch["attention_mask"][r].sum())
            one = {"input_ids": batch["input_ids"][r:r + 1, :n], "attention_mask": batch["attention_mask"][r:r + 1, :n],
                   "labels": batch["labels"][r:r + 1]}
            loss = model(**one).loss
            weights = [w for p in layers for w in (p.attn_out.weight, p.ffn_out.weight)]
            grads = torch.autograd.grad(loss, weights)
            for i, p in enumerate(layers):
                gw_attn = (p.attn_out.weight * grads[2 * i]).sum(0).double()
                gw_ffn = (p.ffn_out.weight * grads[2 * i + 1]).sum(0).double()
                heads[i] += gw_attn.view(p.num_heads, p.head_dim).sum(1).pow(2)
                neurons[i] += gw_ffn.pow(2)
    return heads, neurons


def test_fisher_is_the_sum_of_squared_per_sample_mask_gradients(tmp_path):
    m = _model(tmp_path / "f", layers=2, heads=4, hidden=16, ffn=8)
    batches = _batches()
    heads, neurons = get_criterion("fisher").unit_scores(m, iter(batches))
    ref_h, ref_n = _reference(m, batches)
    for i in range(2):
        torch.testing.assert_close(heads[i].double(), ref_h[i], rtol=1e-4, atol=0)
        torch.testing.assert_close(neurons[i].double(), ref_n[i], rtol=1e-4, atol=0)
        assert float(heads[i].min()) > 0 and float(neurons[i].min()) > 0
    # weights were left as they were: no gradients, requires_grad restored
    assert all(p.grad is None and p.requires_grad for p in m.parameters())


def test_fisher_is_not_the_squared_gradient_of_the_summed_loss(tmp_path):
    """Squaring per sample is the point: the square of the batch's summed gradient is a different (smaller
    where samples disagree) number, and Cauchy-Schwarz bounds it by n times the Fisher score."""
    m = _model(tmp_path / "s", layers=1, heads=4, hidden=16, ffn=8)
    batch = _batches()[0]
    heads, _ = get_criterion("fisher").unit_scores(m, iter([batch]))
    m.eval()
    p = get_adapter(m).layers(m)[0]
    loss = m(**batch).loss * 3
    g = torch.autograd.grad(loss, p.attn_out.weight)[0]
    summed = (p.attn_out.weight * g).sum(0).view(4, HEAD_DIM).sum(1).pow(2).detach()
    assert not torch.allclose(heads[0], summed, rtol=1e-2, atol=0)
    assert bool((summed <= 3 * heads[0] * (1 + 1e-4)).all())


def test_fisher_is_registered_for_units_only(tmp_path):
    assert "fisher" in criterion_names()
    c = get_criterion("fisher")
    assert c.needs_gradients and not c.scores_weights
    m = load_model(str(make_tiny_model(tmp_path / "u", "bert", layers=1, heads=2, hidden=8, ffn=4)))
    with pytest.raises(PolicyError, match="fisher criterion needs labelled calibration batches"):
        c.unit_scores(m)
    unlabelled = [{k: v for k, v in _batches()[0].items() if k != "labels"}]
    with pytest.raises(PolicyError, match="without 'labels'"):
        c.unit_scores(m, iter(unlabelled))
    with pytest.raises(PolicyError, match="scores heads and FFN neurons only"):
        c.model_weight_scores(m, iter(_batches()))


def test_fisher_scores_distilbert(tmp_path):
    m = _model(tmp_path / "d", "distilbert", layers=1, heads=4, hidden=16, ffn=8)
    heads, neurons = get_criterion("fisher").unit_scores(m, iter(_batches()))
    ref_h, ref_n = _reference(m, _batches())
    torch.testing.assert_close(heads[0].double(), ref_h[0], rtol=1e-4, atol=0)
    torch.testing.assert_close(neurons[0].double(), ref_n[0], rtol=1e-4, atol=0)
