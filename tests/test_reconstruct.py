"""Layer reconstruction: never worse than the plain cut on the calibration set, exact when it can be."""

from __future__ import annotations

import copy

import pytest
import torch

from autoprune.criteria import get_criterion, keep_top, n_removed
from autoprune.errors import PolicyError
from autoprune.models import get_adapter, load_model
from autoprune.reconstruct import DenseTargets, reconstruct_layers
from autoprune.surgery import drop_layers, prune_structured
from conftest import make_tiny_model


def _model(path, model_type: str = "bert", layers: int = 2):
    """A tiny model with weights large enough (std 0.2) that every unit changes the output."""
    m = load_model(str(make_tiny_model(path, model_type, layers=layers, heads=4, hidden=32, ffn=64)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.2)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    return m.eval()


def _batches(n: int = 6, pad_id: int = 0, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Calibration batches of 8 rows of 4..12 tokens, padded with ``pad_id`` (attention_mask 0 there)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(4, 13, (8,), generator=g).tolist()
        ids = torch.full((8, max(lengths)), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, k in enumerate(lengths):
            ids[r, :k] = torch.randint(5, 30, (k,), generator=g)
            mask[r, :k] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (8,), generator=g)})
    return out


def _kept(model, heads: float = 0.5, ffn: float = 0.5, seed: int = 3):
    hs, ns = get_criterion("random").unit_scores(model, seed=seed)
    return ([keep_top(h, h.numel() - n_removed(h.numel(), heads)) for h in hs],
            [keep_top(n, n.numel() - n_removed(n.numel(), ffn)) for n in ns])


def _sums(model, batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's two LayerNorm inputs at the real tokens, read with hooks of the test's own."""
    layers = get_adapter(model).layers(model)
    attn: list[list[torch.Tensor]] = [[] for _ in layers]
    ffn: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = []
    state = {}
    for j, p in enumerate(layers):
        handles.append(p.attn_norm.register_forward_pre_hook(lambda m, a, j=j: attn[j].append(a[0][state["m"]])))
        handles.append(p.ffn_norm.register_forward_pre_hook(lambda m, a, j=j: ffn[j].append(a[0][state["m"]])))
    with torch.no_grad():
        for b in batches:
            state["m"] = b["attention_mask"].bool()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in handles:
        h.remove()
    return [torch.cat(a) for a in attn], [torch.cat(f) for f in ffn]


def _rel(s: torch.Tensor, ref: torch.Tensor, weighting: str = "layernorm") -> float:
    """Relative squared error of ``s`` against ``ref`` (rows = tokens), rows weighted as the fit weights them:
    ``layernorm`` by one over the reference row's variance (what its LayerNorm divides by)."""
    w = torch.ones(ref.shape[0]) if weighting == "uniform" else 1 / (ref.var(dim=1, unbiased=False) + 1e-6)
    mean = (w[:, None] * ref).sum(0) / w.sum()
    return float((w[:, None] * (s - ref).pow(2)).sum() / (w[:, None] * (ref - mean).pow(2)).sum())


@pytest.mark.parametrize("method,weighting", [("projection", "layernorm"), ("scales", "layernorm"),
                                              ("projection", "uniform")])
def test_reconstruction_never_increases_a_layers_calibration_error(tmp_path, method, weighting):
    dense = _model(tmp_path / "m", layers=3)
    batches = _batches()
    kh, kn = _kept(dense, 0.5, 0.75)
    cut = prune_structured(copy.deepcopy(dense), kh, kn)
    fitted = prune_structured(copy.deepcopy(dense), kh, kn)
    records = reconstruct_layers(fitted, dense, batches, method=method, weighting=weighting)
    d_attn, d_ffn = _sums(dense, batches)
    c_attn, c_ffn = _sums(cut, batches)
    f_attn, f_ffn = _sums(fitted, batches)
    assert [r["layer"] for r in records] == [0, 1, 2]
    for i, r in enumerate(records):
        assert r["attn_error_after"] <= r["attn_error_before"] + 1e-9
        assert r["ffn_error_after"] <= r["ffn_error_before"] + 1e-9
        # the records are what the re-fitted model computes (hooks of this test, not the module's)
        assert r["attn_error_after"] == pytest.approx(_rel(f_attn[i], d_attn[i], weighting), rel=1e-3)
        assert r["ffn_error_after"] == pytest.approx(_rel(f_ffn[i], d_ffn[i], weighting), rel=1e-3)
        # and better than no reconstruction at all, layer by layer
        assert _rel(f_attn[i], d_attn[i], weighting) <= _rel(c_attn[i], d_attn[i], weighting)
        assert _rel(f_ffn[i], d_ffn[i], weighting) <= _rel(c_ffn[i], d_ffn[i], weighting)
    # layer 0 sees the same input with and without reconstruction: "before" is the plain cut's error
    assert records[0]["attn_error_before"] == pytest.approx(_rel(c_attn[0], d_attn[0], weighting), rel=1e-3)
    assert records[-1]["ffn_error_after"] < records[-1]["ffn_error_before"]


@torch.no_grad()
def _silence_cut_units(model, kept_heads, kept_neurons) -> None:
    """Zero the output-projection columns of every head and neuron not kept, so they contribute nothing."""
    for p, heads, neurons in zip(get_adapter(model).layers(model), kept_heads, kept_neurons):
        for h in set(range(p.num_heads)) - set(heads):
            p.attn_out.weight[:, h * p.head_dim:(h + 1) * p.head_dim] = 0
        for n in set(range(p.num_neurons)) - set(neurons):
            p.ffn_out.weight[:, n] = 0


def test_recovers_the_dense_output_when_the_removed_units_contributed_nothing(tmp_path):
    dense = _model(tmp_path / "z")
    kh, kn = _kept(dense)
    _silence_cut_units(dense, kh, kn)  # the units that will be cut write nothing: the dense model does not need them
    pruned = prune_structured(copy.deepcopy(dense), kh, kn)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # and what is kept was disturbed after the cut
        for p in get_adapter(pruned).layers(pruned):
            for lin in (p.attn_out, p.ffn_out):
                lin.weight.add_(torch.randn(lin.weight.shape, generator=g) * 0.2)
                lin.bias.add_(torch.randn(lin.bias.shape, generator=g) * 0.2)
    batches = _batches()
    probe = _batches(2, seed=9)  # rows the fit never saw
    with torch.no_grad():
        want = [dense(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in probe]
        before = [pruned(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in probe]
    assert not torch.allclose(before[0], want[0], atol=1e-2)
    records = reconstruct_layers(pruned, dense, batches, ridge=0.0)
    with torch.no_grad():
        got = [pruned(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in probe]
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_, rtol=1e-4, atol=1e-4)
    assert all(r["attn_error_after"] < 1e-8 and r["ffn_error_after"] < 1e-8 for r in records)
    assert all(r["ffn_error_before"] > 1e-3 for r in records)


def test_scales_recover_a_per_unit_rescaling(tmp_path):
    dense = _model(tmp_path / "s")
    kh, kn = _kept(dense)
    _silence_cut_units(dense, kh, kn)
    pruned = prune_structured(copy.deepcopy(dense), kh, kn)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in get_adapter(pruned).layers(pruned):
            per_head = 0.5 + torch.rand(p.num_heads, generator=g)
            p.attn_out.weight.mul_(per_head.repeat_interleave(p.head_dim)[None, :])
            p.ffn_out.weight.mul_((0.5 + torch.rand(p.num_neurons, generator=g))[None, :])
    records = reconstruct_layers(pruned, dense, _batches(), ridge=0.0, method="scales")
    assert all(r["ffn_error_before"] > 1e-4 for r in records)
    assert all(r["attn_error_after"] < 1e-8 and r["ffn_error_after"] < 1e-8 for r in records)
    for p, q in zip(get_adapter(pruned).layers(pruned), get_adapter(dense).layers(dense)):
        assert float(p.attn_out.weight.detach().abs().sum()) == pytest.approx(float(q.attn_out.weight.detach().abs().sum()), rel=1e-4)


def test_padding_tokens_are_left_out_of_the_fit(tmp_path):
    dense = _model(tmp_path / "p")
    kh, kn = _kept(dense)
    a = prune_structured(copy.deepcopy(dense), kh, kn)
    b = copy.deepcopy(a)
    reconstruct_layers(a, dense, _batches(pad_id=0))
    reconstruct_layers(b, dense, _batches(pad_id=17))  # other ids under attention_mask 0 only
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=na)


def test_dense_targets_are_reused_across_policies_and_layers_map_after_a_drop(tmp_path):
    dense = _model(tmp_path / "t", layers=3)
    batches = _batches()
    targets = DenseTargets.compute(dense, batches)
    assert targets.num_layers == 3 and targets.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    for seed in (3, 4):
        kh, kn = _kept(dense, seed=seed)
        a = prune_structured(copy.deepcopy(dense), kh, kn)
        b = copy.deepcopy(a)
        ra = reconstruct_layers(a, targets)
        rb = reconstruct_layers(b, dense, batches)
        for x, y in zip(ra, rb):
            assert x == pytest.approx(y)
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb)
    kh, kn = _kept(dense)
    dropped = drop_layers(prune_structured(copy.deepcopy(dense), kh, kn), [1])
    records = reconstruct_layers(dropped, targets, layer_map=[0, 2])
    assert [r["dense_layer"] for r in records] == [0, 2]
    assert all(r["ffn_error_after"] <= r["ffn_error_before"] + 1e-9 for r in records)


def test_reconstruct_distilbert(tmp_path):
    dense = _model(tmp_path / "d", "distilbert")
    kh, kn = _kept(dense)
    pruned = prune_structured(copy.deepcopy(dense), kh, kn)
    records = reconstruct_layers(pruned, dense, _batches())
    assert all(r["attn_error_after"] <= r["attn_error_before"] + 1e-9 for r in records)
    assert records[-1]["ffn_error_after"] < records[-1]["ffn_error_before"]


def test_bad_reconstruction_input_is_one_clear_error(tmp_path):
    dense = _model(tmp_path / "e")
    targets = DenseTargets.compute(dense, _batches(2))
    pruned = copy.deepcopy(dense)
    with pytest.raises(PolicyError, match="not both"):
        reconstruct_layers(pruned, targets, _batches(2))
    with pytest.raises(PolicyError, match="needs calibration batches"):
        reconstruct_layers(pruned, dense)
    with pytest.raises(PolicyError, match=r"layer_map \[0, 5\]"):
        reconstruct_layers(pruned, targets, layer_map=[0, 5])
    with pytest.raises(PolicyError, match="unknown reconstruction method 'lsq'; choose one of projection, scales"):
        reconstruct_layers(pruned, targets, method="lsq")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="unknown reconstruction weighting 'l2'; choose one of layernorm, uniform"):
        reconstruct_layers(pruned, targets, weighting="l2")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="at least one calibration batch"):
        DenseTargets.compute(dense, [])


def test_a_block_whose_output_is_not_its_last_layernorms_is_run_again(tmp_path):
    """The layer output is taken as ffn_norm(ffn_out(x) + residual) only where the block says so."""
    dense = _model(tmp_path / "o")
    for p in get_adapter(dense).layers(dense):
        p.block.register_forward_hook(lambda m, a, out: out * 1.5)
    batches = _batches()
    kh, kn = _kept(dense)
    fitted = prune_structured(copy.deepcopy(dense), kh, kn)  # deepcopy keeps the hooks
    records = reconstruct_layers(fitted, dense, batches)
    d_attn, d_ffn = _sums(dense, batches)
    f_attn, f_ffn = _sums(fitted, batches)
    for i, r in enumerate(records):
        assert r["ffn_error_after"] == pytest.approx(_rel(f_ffn[i], d_ffn[i]), rel=1e-3)
        assert r["attn_error_after"] == pytest.approx(_rel(f_attn[i], d_attn[i]), rel=1e-3)
        assert r["ffn_error_after"] <= r["ffn_error_before"] + 1e-9


def test_both_solvers_match_least_squares_on_an_explicit_design():
    """The normal equations from accumulated X^T X / X^T Y give what lstsq gives on the full design matrix."""
    from autoprune.reconstruct import _Stats

    g = torch.Generator().manual_seed(0)
    n, units, width, out = 120, 5, 3, 4
    x = torch.randn(n, units * width, generator=g)
    w0 = torch.randn(out, units * width, generator=g)
    y = x @ w0.T * 0.7 + torch.randn(n, out, generator=g)
    stats = _Stats(units * width, out)
    stats.add(x[:50], y[:50])
    stats.add(x[50:], y[50:])
    # full projection with bias: columns of x and a column of ones
    design = torch.cat([x, torch.ones(n, 1)], 1).double()
    ref = torch.linalg.lstsq(design, y.double()).solution
    w, b = stats.solve_projection(w0, torch.zeros(out), ridge=0.0)
    torch.testing.assert_close(w.double(), ref[:-1].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.double(), ref[-1], rtol=1e-4, atol=1e-5)
    # per-unit scales with bias: one column per unit's contribution x_u w_u^T (flattened), one per bias entry
    contrib = torch.stack([(x[:, u * width:(u + 1) * width] @ w0[:, u * width:(u + 1) * width].T).reshape(-1)
                           for u in range(units)], 1)
    design = torch.cat([contrib, torch.eye(out).repeat(n, 1)], 1).double()
    ref = torch.linalg.lstsq(design, y.reshape(-1, 1).double()).solution[:, 0]
    w, b = stats.solve_scales(w0, torch.zeros(out), width=width, ridge=0.0)
    torch.testing.assert_close((w / w0)[0, ::width].double(), ref[:units], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.double(), ref[units:], rtol=1e-4, atol=1e-5)
    # the ridge pulls towards the weights as cut: a huge ridge leaves them (nearly) as they were
    w, _ = stats.solve_projection(w0, torch.zeros(out), ridge=1e6)
    torch.testing.assert_close(w, w0, rtol=1e-3, atol=1e-3)


def test_masked_update_is_exact_obs_for_one_weight_and_never_worse_than_zeroing():
    """SparseGPT's fixed-mask update: the dropped weights are exactly zero; dropping one weight (the first
    column) is the optimal brain surgeon's exact re-fit; with many dropped weights the quadratic error is
    below that of zeroing them alone."""
    from autoprune.reconstruct import masked_update

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g).double()
    x[:, 1] += x[:, 0]  # correlated inputs: the kept weights have something to absorb
    h = x.T @ x
    w = torch.randn(3, 6, generator=g).double()

    def loss(v: torch.Tensor) -> float:
        return float(((v - w) @ h * (v - w)).sum())

    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[0, 0] = False
    out = masked_update(w, h, keep)
    assert out[0, 0] == 0 and torch.equal(out[1:], w[1:])
    free = [1, 2, 3, 4, 5]  # row 0's exact minimiser over its kept weights
    best = w[0, free] + torch.linalg.solve(h[free][:, free], h[free][:, 0] * w[0, 0])
    torch.testing.assert_close(out[0, free], best)
    keep = torch.rand(3, 6, generator=g) > 0.5
    out = masked_update(w, h, keep, block=4)  # blocks of 4: the lazy update across blocks is exercised
    assert bool((out[~keep] == 0).all())
    assert loss(out) < loss(w * keep)


def test_unstructured_reconstruction_keeps_the_zeros_and_lowers_every_error(tmp_path):
    """``reconstruct: least_squares`` on an unstructured cut: every masked projection is re-fitted with its
    zeros fixed; the model stays exactly as sparse and is closer to the dense one than the plain cut."""
    from autoprune.policy import PruningPolicy
    from autoprune.pruner import layer_weight_sparsity, prune
    from autoprune.surgery import make_unstructured_permanent

    dense = _model(tmp_path)
    batches = _batches()
    targets = DenseTargets.compute(dense, batches)
    out = {}
    for how in ("none", "least_squares"):
        m = copy.deepcopy(dense)
        pol = PruningPolicy(criterion="l1", granularity="unstructured", weight_sparsity=[0.6, 0.6], reconstruct=how)
        rec = prune(m, pol, dense=targets)
        make_unstructured_permanent(m)
        out[how] = (m, rec)
    plain, fitted = out["none"][0], out["least_squares"][0]
    assert layer_weight_sparsity(fitted) == layer_weight_sparsity(plain) == pytest.approx([0.6, 0.6], abs=1e-3)
    for lp, lf in zip(get_adapter(plain).layers(plain), get_adapter(fitted).layers(fitted)):
        for a, b in zip(lp.linears(), lf.linears()):
            assert torch.equal(a.weight == 0, b.weight == 0)  # the same zeros
            assert not torch.equal(a.weight, b.weight)  # every masked projection was re-fitted
    for r in out["least_squares"][1].reconstruction:
        assert r["attn_error_after"] < r["attn_error_before"] and r["ffn_error_after"] < r["ffn_error_before"]
    last = _sums(dense, batches)[1][-1]  # the model's last LayerNorm input
    assert _rel(_sums(fitted, batches)[1][-1], last) < _rel(_sums(plain, batches)[1][-1], last)
