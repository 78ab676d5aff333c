"""Each criterion ranks units the way its definition says, on hand-built weights."""

from __future__ import annotations

import torch

from autoprune.criteria import accumulate_gradients, criterion_names, get_criterion, keep_top
from autoprune.models import get_adapter, load_model
from conftest import make_tiny_model


def _model(tmp_path):
    m = load_model(str(make_tiny_model(tmp_path / "m", "bert", layers=1, heads=4, hidden=16, ffn=8)))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    return m


def test_l1_and_l2_rank_heads_by_their_norms(tmp_path):
    m = _model(tmp_path)
    parts = get_adapter(m).layers(m)[0]
    d = 4
    with torch.no_grad():
        # head 0: many small weights (large L1, small L2); head 1: one big weight (small L1, large L2)
        parts.block.attention.self.query.weight[0:d, :] = 0.1          # L1 = 6.4, L2^2 = 0.64
        parts.block.attention.self.key.weight[d, 0] = 2.0              # L1 = 2.0, L2^2 = 4.0
        parts.attn_out.weight[:, 2 * d] = 0.05    # head 2: L1 = 0.8, L2^2 = 0.04
    h1, _ = get_criterion("l1").unit_scores(m)
    h2, _ = get_criterion("l2").unit_scores(m)
    assert torch.allclose(h1[0], torch.tensor([6.4, 2.0, 0.8, 0.0]), atol=1e-5)
    assert torch.allclose(h2[0], torch.tensor([0.64, 4.0, 0.04, 0.0]), atol=1e-5)
    assert keep_top(h1[0], 1) == [0] and keep_top(h2[0], 1) == [1]
    assert keep_top(h1[0], 3) == [0, 1, 2]


def test_l1_ranks_ffn_neurons_with_both_projections(tmp_path):
    m = _model(tmp_path)
    parts = get_adapter(m).layers(m)[0]
    with torch.no_grad():
        parts.block.intermediate.dense.weight[3, :] = 1.0           # neuron 3: 16 from the input rows
        parts.ffn_out.weight[:, 5] = 2.0          # neuron 5: 32 from the output columns
        parts.block.intermediate.dense.bias[1] = -4.0               # neuron 1: 4 from its bias
    _, n = get_criterion("l1").unit_scores(m)
    assert keep_top(n[0], 3) == [1, 3, 5]
    assert torch.argsort(n[0], descending=True)[:3].tolist() == [5, 3, 1]


def test_gradient_criterion_is_first_order_taylor_with_real_gradients(tmp_path):
    m = load_model(str(make_tiny_model(tmp_path / "g", "bert", layers=1, heads=4, hidden=16, ffn=8)))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 30, (4, 6), generator=g), "attention_mask": torch.ones(4, 6, dtype=torch.long),
                "labels": torch.tensor([0, 1, 1, 0])} for _ in range(2)]
    assert accumulate_gradients(m, iter(batches)) == 2
    parts = get_adapter(m).layers(m)[0]
    ffn_in = parts.block.intermediate.dense
    # reference: the summed gradient of both batches, computed independently with autograd
    m2 = load_model(str(tmp_path / "g"))
    m2.eval()
    p2 = get_adapter(m2).layers(m2)[0]
    loss = sum(m2(**b).loss for b in batches)
    grad_in = torch.autograd.grad(loss, p2.block.intermediate.dense.weight, retain_graph=True)[0]
    torch.testing.assert_close(parts.block.intermediate.dense.weight.grad, grad_in, rtol=1e-4, atol=1e-6)
    w_in, b_in, w_out = ffn_in.weight, ffn_in.bias, parts.ffn_out.weight
    ref = (w_in * w_in.grad).abs().sum(1) + (b_in * b_in.grad).abs() + (w_out * w_out.grad).abs().sum(0)
    ref = ref.detach().clone()
    _, n = get_criterion("gradient").unit_scores(m, iter(batches))  # re-accumulates the same gradients
    torch.testing.assert_close(n[0], ref)
    assert float(n[0].sum()) > 0


def test_random_is_seeded_and_unstructured_keeps_masked_weights_out(tmp_path):
    m = load_model(str(make_tiny_model(tmp_path / "r", "bert", layers=1, heads=4, hidden=16, ffn=8)))
    rnd = get_criterion("random")
    a, _ = rnd.unit_scores(m, seed=3)
    b, _ = rnd.unit_scores(m, seed=3)
    c, _ = rnd.unit_scores(m, seed=4)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    import torch.nn.utils.prune as tprune

    parts = get_adapter(m).layers(m)[0]
    query = parts.block.attention.self.query
    mask = torch.ones_like(query.weight)
    mask[0, 0] = 0
    tprune.custom_from_mask(query, "weight", mask)
    scores = rnd.model_weight_scores(m, seed=0)
    name = next(k for k in scores if k.endswith("attention.self.query"))
    assert scores[name][0, 0] == float("-inf")
    s_l1 = get_criterion("l1").model_weight_scores(m)
    s_l2 = get_criterion("l2").model_weight_scores(m)
    torch.testing.assert_close(s_l2[name][1:], s_l1[name][1:] ** 2)


def test_registry_names_feed_policy_validation(tmp_path):
    from autoprune.errors import PolicyError
    from autoprune.policy import PruningPolicy

    assert set(criterion_names()) >= {"random", "gradient", "l1", "l2"}
    for name in criterion_names():
        assert PruningPolicy.uniform(name, 2, heads=0.5).criterion == name
    import pytest

    with pytest.raises(PolicyError, match="unknown criterion 'magnitude'; choose one of " + ", ".join(criterion_names())):
        PruningPolicy.from_dict({"criterion": "magnitude", "head_sparsity": [0.5, 0.5]})


def test_gradient_criterion_without_batches_is_a_clear_error(tmp_path):
    import pytest

    from autoprune.errors import PolicyError

    m = load_model(str(make_tiny_model(tmp_path / "n", "bert", layers=1, heads=2, hidden=8, ffn=4)))
    with pytest.raises(PolicyError, match="needs labelled calibration batches"):
        get_criterion("gradient").unit_scores(m)
