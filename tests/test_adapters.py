"""Every adapter, on a tiny randomly initialised model of its family (configs in conftest.tiny_hf_config).

For each: keeping everything changes nothing; a structurally pruned model equals the dense model with
the removed heads' and neurons' outputs masked at the output projections' inputs; a model with
dropped layers equals the dense model with those layers passing their input through (a forward hook,
not the code under test); per-layer shapes and logits survive save and load; every registered
criterion runs; ONNX export matches PyTorch; the analytic FLOPs equal torch's FLOP counter.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from autoprune.criteria import criterion_names, get_criterion, keep_top
from autoprune.errors import ModelError, PolicyError
from autoprune.measure import count_flops
from autoprune.models import get_adapter, load_model, supported_model_types
from autoprune.surgery import drop_layers, prune_structured
from conftest import make_tiny_model

LAYERS, HEADS, HIDDEN, FFN = 3, 4, 32, 64

# (model_type, config overrides); deberta-v2 twice: position projections shared with q/k (v3) or separate
CASES = {
    "bert": ("bert", {}),
    "distilbert": ("distilbert", {}),
    "roberta": ("roberta", {}),
    "modernbert": ("modernbert", {}),
    "deberta-v2-shared-key": ("deberta-v2", {"share_att_key": True}),
    "deberta-v2-separate-key": ("deberta-v2", {"share_att_key": False}),
    "electra": ("electra", {}),
    "xlm-roberta": ("xlm-roberta", {}),
    "camembert": ("camembert", {}),
    "mpnet": ("mpnet", {}),
}

# different heads per layer, not contiguous, so a per-layer coupling indexed wrongly shows in the logits
KEPT_HEADS = [[0, 2], [1, 2, 3], [3]]
KEPT_NEURONS = [list(range(0, FFN, 2)), list(range(10, 50)), [1, 5, 7, 33, 63]]


def round_trip(model: nn.Module, path: Path) -> nn.Module:
    """Save a pruned model and load it back through the package's one loader."""
    from autoprune.serialization import load_pruned, save_pruned

    save_pruned(model, path)
    return load_pruned(path)


def _batch(seed: int = 0, labels: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        out["labels"] = torch.tensor([0, 1, 0])
    return out


def _build(tmp_path: Path, case: str, **extra) -> nn.Module:
    model_type, kw = CASES[case]
    path = make_tiny_model(tmp_path / case, model_type, layers=LAYERS, heads=HEADS, hidden=HIDDEN, ffn=FFN,
                           **{**kw, **extra})
    return load_model(str(path)).eval()


@pytest.fixture(params=list(CASES))
def tiny(request, tmp_path):
    return _build(tmp_path, request.param)


def _logits(model: nn.Module, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model(**_batch(seed)).logits


def _mask_inputs(linear: nn.Linear, keep: torch.Tensor) -> None:
    """Multiply the input of ``linear`` by a 0/1 vector (the removed units' outputs become zero)."""
    linear.register_forward_pre_hook(lambda mod, args: (args[0] * keep.to(args[0].dtype),) + tuple(args[1:]))


def _skip_layer(layer: nn.Module) -> None:
    """Make ``layer`` return its input hidden states (keeping the output's container type)."""
    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    layer.register_forward_hook(identity, with_kwargs=True)


def test_every_supported_model_type_is_tested():
    assert sorted({t for t, _ in CASES.values()}) == sorted(supported_model_types())


def test_pruning_nothing_leaves_logits_unchanged(tiny):
    before = _logits(tiny)
    prune_structured(tiny, [list(range(HEADS))] * LAYERS, [list(range(FFN))] * LAYERS)
    drop_layers(tiny, [])
    assert get_adapter(tiny).shape(tiny) == ([HEADS] * LAYERS, [FFN] * LAYERS)
    assert torch.equal(_logits(tiny), before)


def test_pruned_equals_dense_with_units_masked(tiny):
    """Masking at the output projections' inputs is masking the heads' outputs and, for ModernBERT's
    gated FFN, the activation ``act(input) * gate`` itself."""
    adapter = get_adapter(tiny)
    masked = copy.deepcopy(tiny)
    d = adapter.head_dim(masked)
    for parts, kh, kn in zip(adapter.layers(masked), KEPT_HEADS, KEPT_NEURONS):
        heads = torch.zeros(HEADS)
        heads[kh] = 1
        neurons = torch.zeros(FFN)
        neurons[kn] = 1
        _mask_inputs(parts.attn_out, heads.repeat_interleave(d))
        _mask_inputs(parts.ffn_out, neurons)
    prune_structured(tiny, KEPT_HEADS, KEPT_NEURONS)
    assert adapter.shape(tiny) == ([len(k) for k in KEPT_HEADS], [len(k) for k in KEPT_NEURONS])
    for parts in adapter.layers(tiny):  # every slice was cut to the kept units (fused ones chunk by chunk)
        for s in parts.head_slices:
            assert s.size() == s.chunks * parts.num_heads * parts.head_dim
        for s in parts.neuron_slices:
            assert s.size() == s.chunks * parts.num_neurons
    torch.testing.assert_close(_logits(tiny), _logits(masked), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(tiny, seed=1), _logits(masked, seed=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("drop", [[0], [1], [0, 2]])
def test_dropped_layers_equal_dense_with_those_layers_skipped(tiny, drop):
    adapter = get_adapter(tiny)
    skipped = copy.deepcopy(tiny)
    for i in drop:
        _skip_layer(adapter.layer_modules(skipped)[i])
    drop_layers(tiny, drop)
    assert len(adapter.layer_modules(tiny)) == adapter.depth(tiny.config) == LAYERS - len(drop)
    torch.testing.assert_close(_logits(tiny), _logits(skipped), rtol=1e-5, atol=1e-5)


def test_shapes_and_logits_survive_save_and_load(tiny, tmp_path):
    adapter = get_adapter(tiny)
    prune_structured(tiny, KEPT_HEADS, KEPT_NEURONS)
    drop_layers(tiny, [0])  # the first layer goes: ModernBERT's new first layer keeps its attention LayerNorm
    shape = adapter.shape(tiny)
    again = round_trip(tiny, tmp_path / "saved")
    assert adapter.shape(again) == shape == ([3, 1], [40, 5])
    torch.testing.assert_close(_logits(again), _logits(tiny))
    torch.testing.assert_close(_logits(again, seed=2), _logits(tiny, seed=2))


def test_every_criterion_scores_a_pruned_model(tiny):
    prune_structured(tiny, KEPT_HEADS, KEPT_NEURONS)
    adapter = get_adapter(tiny)
    heads_shape, ffn_shape = adapter.shape(tiny)
    names = {id(m): n for n, m in tiny.named_modules()}
    batches = [_batch(0, labels=True), _batch(1, labels=True)]
    for name in criterion_names():
        crit = get_criterion(name)
        heads, neurons = crit.unit_scores(tiny, iter(batches), seed=0)
        assert [h.numel() for h in heads] == heads_shape and [n.numel() for n in neurons] == ffn_shape, name
        assert all(torch.isfinite(t).all() for t in heads + neurons), name
        if crit.scores_weights:
            scores = crit.model_weight_scores(tiny, iter(batches), seed=0)
            linears = [lin for parts in adapter.layers(tiny) for lin in parts.linears()]
            assert sorted(scores) == sorted(names[id(lin)] for lin in linears), name
            assert all(scores[names[id(lin)]].shape == lin.weight.shape for lin in linears), name
        # the scores drive a second cut: keep the better half of what each layer has
        kept_h = [keep_top(h, max(1, h.numel() // 2)) for h in heads]
        kept_n = [keep_top(n, max(1, n.numel() // 2)) for n in neurons]
        scored = prune_structured(copy.deepcopy(tiny), kept_h, kept_n)
        assert get_adapter(scored).shape(scored) == ([len(k) for k in kept_h], [len(k) for k in kept_n])
        assert torch.isfinite(_logits(scored)).all(), name


def test_onnx_export_matches_pytorch(tiny, tmp_path):
    """Every supported family exports (legacy exporter, opset 17); export_onnx itself compares the
    onnxruntime logits with PyTorch's on a batch of another shape."""
    from autoprune.onnx_export import export_onnx

    prune_structured(tiny, KEPT_HEADS, KEPT_NEURONS)
    drop_layers(tiny, [1])
    out = export_onnx(tiny, tmp_path / "model.onnx", atol=1e-4)
    assert out.is_file() and out.stat().st_size > 0


def test_flops_match_torch_flop_counter(tiny):
    """The analytic count equals what torch's FLOP counter sees in the encoder layers (eager attention:
    the counter does not see into CPU SDPA kernels), on a pruned model with a dropped layer."""
    from torch.utils.flop_counter import FlopCounterMode

    prune_structured(tiny, KEPT_HEADS, KEPT_NEURONS)
    drop_layers(tiny, [1])
    tiny.set_attn_implementation("eager")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tiny(**_batch())
    names = {id(m): n for n, m in tiny.named_modules()}
    counts = counter.get_flop_counts()
    keys = [f"{type(tiny).__name__}.{names[id(layer)]}" for layer in get_adapter(tiny).layer_modules(tiny)]
    measured = sum(sum(counts[k].values()) for k in keys)
    assert measured > 0 and count_flops(tiny, seq_len=12, batch_size=3) == measured


# ----------------------------------------------------------------------------- per-architecture couplings
def test_modernbert_fused_qkv_and_gate_rows_follow_their_units(tmp_path):
    """A head owns its rows in each of Wqkv's q, k and v blocks; a neuron its row in both halves of Wi."""
    model = _build(tmp_path, "modernbert")
    layer = get_adapter(model).layer_modules(model)[0]
    d = HIDDEN // HEADS
    qkv = layer.attn.Wqkv.weight.detach().clone()
    wi = layer.mlp.Wi.weight.detach().clone()
    prune_structured(model, [[1, 3]] + [list(range(HEADS))] * 2, [[2, 60]] + [list(range(FFN))] * 2)
    rows = [b * HIDDEN + h * d + j for b in range(3) for h in (1, 3) for j in range(d)]
    assert torch.equal(layer.attn.Wqkv.weight, qkv[rows])
    assert torch.equal(layer.mlp.Wi.weight, wi[[2, 60, FFN + 2, FFN + 60]])


def test_modernbert_kept_layers_keep_their_attention_type(tmp_path):
    """transformers gives a layer its local/global type by index (config.layer_types[layer_idx]):
    after dropping layers the config lists the kept layers' own types, also after save and load."""
    model = _build(tmp_path, "modernbert")
    assert model.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    drop_layers(model, [0])
    adapter = get_adapter(model)
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert [layer.attention_type for layer in adapter.layer_modules(model)] == model.config.layer_types
    again = round_trip(model, tmp_path / "saved")
    assert again.config.layer_types == ["sliding_attention", "full_attention"]
    rebuilt = adapter.layer_modules(again)
    assert [layer.attn.sliding_window for layer in rebuilt] == [model.config.sliding_window + 1, None]
    assert isinstance(rebuilt[0].attn_norm, nn.LayerNorm)  # the former layer 1 had a pre-attention norm
    torch.testing.assert_close(_logits(again), _logits(model))


@pytest.mark.parametrize("share", [True, False])
def test_deberta_position_projections_are_cut_with_their_heads(tmp_path, share):
    model = _build(tmp_path, "deberta-v2-shared-key" if share else "deberta-v2-separate-key")
    att = get_adapter(model).layer_modules(model)[0].attention.self
    assert att.share_att_key is share and att.pos_att_type == ["p2c", "c2p"]
    assert hasattr(att, "pos_key_proj") is (not share) and hasattr(att, "pos_query_proj") is (not share)
    prune_structured(model, KEPT_HEADS, None)
    d = HIDDEN // HEADS
    assert att.num_attention_heads == 2 and att.all_head_size == 2 * d
    if not share:
        assert att.pos_key_proj.out_features == att.pos_query_proj.out_features == 2 * d


@pytest.mark.parametrize("pos_att_type", [["c2p"], ["p2c"]])
def test_deberta_single_attention_type(tmp_path, pos_att_type):
    """With only c2p (only p2c) there is only pos_key_proj (pos_query_proj); pruning still equals masking."""
    model = _build(tmp_path, "deberta-v2-separate-key", pos_att_type=pos_att_type)
    adapter = get_adapter(model)
    att = adapter.layer_modules(model)[0].attention.self
    assert hasattr(att, "pos_key_proj") is ("c2p" in pos_att_type)
    assert hasattr(att, "pos_query_proj") is ("p2c" in pos_att_type)
    masked = copy.deepcopy(model)
    d = HIDDEN // HEADS
    for parts, kh in zip(adapter.layers(masked), KEPT_HEADS):
        heads = torch.zeros(HEADS)
        heads[kh] = 1
        _mask_inputs(parts.attn_out, heads.repeat_interleave(d))
    prune_structured(model, KEPT_HEADS, None)
    torch.testing.assert_close(_logits(model), _logits(masked), rtol=1e-5, atol=1e-5)


def test_deberta_with_convolution_refuses_to_drop_layer_0(tmp_path):
    """DeBERTa-v2 (not v3) checkpoints with conv_kernel_size > 0 convolve the first layer's output."""
    model = _build(tmp_path, "deberta-v2-shared-key", conv_kernel_size=3)
    with pytest.raises(PolicyError, match="layer 0 cannot be dropped"):
        drop_layers(model, [0])
    skipped = copy.deepcopy(model)
    _skip_layer(get_adapter(skipped).layer_modules(skipped)[1])
    drop_layers(model, [1])
    torch.testing.assert_close(_logits(model), _logits(skipped), rtol=1e-5, atol=1e-5)


def test_mpnet_layers_select_their_own_heads_of_the_shared_bias(tmp_path):
    model = _build(tmp_path / "a", "mpnet")
    prune_structured(model, KEPT_HEADS, None)
    state = model.state_dict()
    for i, kept in enumerate(KEPT_HEADS):
        assert state[f"mpnet.encoder.layer.{i}.attention.attn.autoprune_bias_heads"].tolist() == kept
    assert model.mpnet.encoder.relative_attention_bias.embedding_dim == HEADS  # the shared table is not cut
    # cutting again composes with the first cut: the same model as one cut to the original indices
    prune_structured(model, [[0, 1], [0, 2], [0]], None)
    once = prune_structured(_build(tmp_path / "b", "mpnet"), [[0, 2], [1, 3], [3]], None)
    assert model.mpnet.encoder.layer[1].attention.attn.autoprune_bias_heads.tolist() == [1, 3]
    torch.testing.assert_close(_logits(model), _logits(once))


def test_unsupported_architecture_lists_types_and_the_adapter_contract(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ModelError) as err:
        load_model(str(tmp_path))
    msg = str(err.value)
    assert msg.startswith("unsupported architecture 'gpt2'; autoprune supports model_type bert, camembert, "
                          "deberta-v2, distilbert, electra, modernbert, mpnet, roberta, xlm-roberta.")
    for needed in ("Adapter subclass", "layer_modules", "parts(layer)", "set_num_heads", "register_adapter"):
        assert needed in msg
