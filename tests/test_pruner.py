"""prune(): what the record says, composition of iterative steps, layer dropping, exact re-application."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch

from autoprune.errors import PolicyError
from autoprune.models import get_adapter, load_model
from autoprune.policy import PruningPolicy
from autoprune.pruner import PruneRecord, apply_record, prune, text_batches
from conftest import NEG, POS, make_tiny_model, token_batch


_batch = token_batch


@torch.no_grad()
def _logits(model):
    return model(**_batch()).logits


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pruner") / "bert", layers=3, heads=4, ffn=64)


@pytest.fixture
def tiny(tiny_dir):
    return load_model(str(tiny_dir)).eval()


@pytest.fixture(scope="module")
def calib(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    texts = [f"the film was {w}" for w in POS + NEG]
    return text_batches(tok, texts, [1] * len(POS) + [0] * len(NEG), batch_size=4)


def _masked_dense(dense, record: PruneRecord):
    """The dense model with every unit the record removed zeroed where it enters the output projections."""
    masked = copy.deepcopy(dense)
    adapter = get_adapter(masked)
    d = adapter.head_dim(masked)
    with torch.no_grad():
        for j, parts in enumerate(adapter.layers(masked)):
            for h in set(range(parts.num_heads)) - set(record.kept_heads[j]):
                parts.attn_out.weight[:, h * d:(h + 1) * d] = 0
            drop = sorted(set(range(parts.num_neurons)) - set(record.kept_neurons[j]))
            parts.ffn_out.weight[:, drop] = 0
    return masked


def test_record_says_what_was_kept(tiny):
    dense = copy.deepcopy(tiny)
    pol = PruningPolicy(criterion="l1", head_sparsity=[0.0, 0.25, 0.75], ffn_sparsity=[0.5, 0.1, 0.9])
    rec = prune(tiny, pol)
    assert rec.criterion == "l1" and rec.granularity == "structured" and rec.steps == 1
    assert rec.original_heads == [4, 4, 4] and rec.original_ffn == [64, 64, 64] and rec.dropped_layers == []
    assert rec.heads_per_layer == [4, 3, 1] and rec.ffn_per_layer == [32, 58, 6]
    assert [len(k) for k in rec.kept_heads] == rec.heads_per_layer
    assert get_adapter(tiny).shape(tiny) == (rec.heads_per_layer, rec.ffn_per_layer)
    assert set(rec.timings) == {"scoring", "planning", "cut", "reconstruction"}
    assert rec.timings["reconstruction"] == 0.0 and rec.reconstruction is None
    # the kept indices name units of the original model: masking the others there gives the same outputs
    torch.testing.assert_close(_logits(tiny), _logits(_masked_dense(dense, rec)), rtol=1e-5, atol=1e-5)
    assert PruneRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_fractions_compose_into_indices_of_the_original_model(tiny, calib):
    dense = copy.deepcopy(tiny)
    pol = PruningPolicy(criterion="gradient", head_sparsity=[0.5, 0.75, 0.25], ffn_sparsity=[0.5, 0.25, 0.75],
                        iterative_steps=2)
    first = prune(tiny, pol, calib, fraction=0.5)
    assert first.heads_per_layer == [3, 2, 4] and first.ffn_per_layer == [48, 56, 40]  # half of each target
    second = prune(tiny, pol, calib, fraction=1.0, previous=first)
    assert second.steps == 2 and second.heads_per_layer == [2, 1, 3] and second.ffn_per_layer == [32, 48, 16]
    for a, b in zip(first.kept_heads + first.kept_neurons, second.kept_heads + second.kept_neurons):
        assert set(b) <= set(a)
    assert all(second.timings[k] >= first.timings[k] for k in first.timings)
    torch.testing.assert_close(_logits(tiny), _logits(_masked_dense(dense, second)), rtol=1e-5, atol=1e-5)
    with pytest.raises(PolicyError, match="not the shape of the previous record"):
        prune(copy.deepcopy(dense), pol, calib, previous=first)


def test_drop_layer_count_removes_the_least_important_block(tiny):
    adapter = get_adapter(tiny)
    with torch.no_grad():  # layer 1's unit weights become tiny: the least important block under l1
        for lin in adapter.layers(tiny)[1].linears():
            lin.weight.mul_(0.01)
    pol = PruningPolicy(criterion="l1", head_sparsity=[0.5, 0.5, 0.25], ffn_sparsity=[0.5, 0.5, 0.5],
                        drop_layer_count=1)
    rec = prune(tiny, pol)
    assert rec.dropped_layers == [1] and rec.remaining_layers() == [0, 2]
    assert rec.kept_heads[1] == [] and rec.kept_neurons[1] == []
    assert rec.heads_per_layer == [2, 3] and rec.ffn_per_layer == [32, 32]  # the dropped layer's sparsity ignored
    assert adapter.depth(tiny.config) == 2 and len(adapter.layer_modules(tiny)) == 2


def test_full_sparsity_and_a_fixed_list_drop_layers(tiny_dir):
    pol = PruningPolicy(criterion="random", head_sparsity=[1.0, 0.5, 0.0], ffn_sparsity=[0.0, 0.5, 0.0])
    half = load_model(str(tiny_dir)).eval()
    step1 = prune(half, pol, fraction=0.5)  # half of 1.0 keeps the layer (half its heads)
    assert step1.dropped_layers == [] and step1.heads_per_layer == [2, 3, 4]
    step2 = prune(half, pol, previous=step1)
    assert step2.dropped_layers == [0] and step2.heads_per_layer == [2, 4]

    fixed = load_model(str(tiny_dir)).eval()
    rec = prune(fixed, pol.model_copy(update={"head_sparsity": [0.5, 0.5, 0.0], "drop_layers": [2]}))
    assert rec.dropped_layers == [2] and rec.heads_per_layer == [2, 2]
    with pytest.raises(PolicyError, match="removes all 3 encoder layers"):
        prune(load_model(str(tiny_dir)).eval(), pol.model_copy(update={"drop_layers": [1, 2]}))


def test_a_record_reapplies_exactly_the_same_model(tiny, calib):
    dense = copy.deepcopy(tiny)
    pol = PruningPolicy(criterion="gradient", head_sparsity=[0.5, 1.0, 0.25], ffn_sparsity=[0.25, 0.5, 0.75])
    rec = prune(tiny, pol, calib)
    again = copy.deepcopy(dense)
    apply_record(again, PruneRecord.from_dict(json.loads(json.dumps(rec.to_dict()))))
    a, b = tiny.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    replayed = copy.deepcopy(dense)
    rec2 = prune(replayed, pol, replay=rec)  # no calibration batches needed: nothing is scored
    assert rec2.kept_heads == rec.kept_heads and torch.equal(_logits(replayed), _logits(tiny))
    with pytest.raises(PolicyError, match="indexes unit 7 but the model has 4"):
        apply_record(copy.deepcopy(dense), PruneRecord.from_kept([[0, 7], [1], [2]], None, criterion="l1"))
    with pytest.raises(PolicyError, match="duplicate"):
        PruneRecord.from_kept([[0, 0], [1], [2]], None, criterion="l1")


def test_unstructured_record_summarises_the_masks(tiny):
    pol = PruningPolicy(criterion="l2", granularity="unstructured", weight_sparsity=[0.5, 0.25, 0.75])
    rec = prune(tiny, pol)
    assert rec.kept_heads is None and rec.dropped_layers == [] and rec.heads_per_layer == [4, 4, 4]
    assert rec.weight_sparsity == pytest.approx([0.5, 0.25, 0.75], abs=1e-3)


def test_reconstruction_is_called_on_the_pruned_and_dense_layers(tiny, tiny_dir, calib, monkeypatch):
    calls = []

    def fake(pruned, dense, batches, *, layer_map, ridge=None):
        calls.append({"pruned": get_adapter(pruned).shape(pruned), "dense": get_adapter(dense).shape(dense),
                      "batches": len(batches), "layer_map": layer_map, "ridge": ridge})
        return [{"layer": i, "error_before": 1.0, "error_after": 0.5} for i in layer_map]

    monkeypatch.setitem(sys.modules, "autoprune.reconstruct", types.SimpleNamespace(reconstruct_layers=fake,
                                                                                  DenseTargets=type("T", (), {})))
    pol = PruningPolicy(criterion="l1", head_sparsity=[0.5, 1.0, 0.5], ffn_sparsity=[0.5, 0.5, 0.5],
                        reconstruct="least_squares", calibration={"ridge": 0.1})
    rec = prune(tiny, pol, calib)
    assert calls == [{"pruned": ([2, 2], [32, 32]), "dense": ([4, 4, 4], [64, 64, 64]), "batches": len(calib),
                      "layer_map": [0, 2], "ridge": 0.1}]
    assert rec.reconstruction == [{"layer": 0, "error_before": 1.0, "error_after": 0.5},
                                  {"layer": 2, "error_before": 1.0, "error_after": 0.5}]
    with pytest.raises(PolicyError, match="needs calibration batches"):
        prune(load_model(str(tiny_dir)).eval(), pol)


def test_real_reconstruction_runs_when_present(tiny, calib):
    pytest.importorskip("autoprune.reconstruct")
    pol = PruningPolicy(criterion="l1", head_sparsity=[0.5] * 3, ffn_sparsity=[0.5] * 3, reconstruct="least_squares")
    rec = prune(tiny, pol, calib)
    assert isinstance(rec.reconstruction, list) and len(rec.reconstruction) == 3
    assert rec.timings["reconstruction"] > 0


def test_bad_arguments_get_one_clear_error(tiny):
    pol = PruningPolicy(criterion="l1", head_sparsity=[0.5] * 3)
    with pytest.raises(PolicyError, match=r"fraction 0 must lie in \(0, 1\]"):
        prune(tiny, pol, fraction=0)
    with pytest.raises(PolicyError, match="gradient criterion needs labelled calibration batches"):
        prune(tiny, pol.model_copy(update={"criterion": "gradient"}))
    with pytest.raises(PolicyError, match="unknown field"):
        PruneRecord.from_dict({"criterion": "l1", "bogus": 1})


@pytest.mark.parametrize("data, fragment", [
    ({"criterion": "l1", "head_sparsity": [0.5] * 3, "drop_layers": [1], "drop_layer_count": 1}, "not both"),
    ({"criterion": "l1", "granularity": "unstructured", "weight_sparsity": [0.5] * 3, "drop_layer_count": 1},
     "belong to structured policies"),
    ({"criterion": "l1", "head_sparsity": [0.5] * 3, "drop_layers": [1, 1]}, "distinct encoder layer indices"),
    ({"criterion": "l1", "head_sparsity": [0.5] * 3, "reconstruct": "svd"}, "reconstruct"),
])
def test_layer_drop_and_reconstruct_fields_are_validated(data, fragment):
    with pytest.raises(PolicyError, match=fragment):
        PruningPolicy.from_dict(data, "p.yaml")


def test_new_policy_fields_stay_out_of_old_policies_dicts():
    old = {"criterion": "l1", "granularity": "structured", "head_sparsity": [0.5, 0.5], "iterative_steps": 1,
           "retrain": {"steps": 200, "learning_rate": 3e-5, "warmup_ratio": 0.1, "batch_size": 32},
           "quantize": False, "qat": False, "seed": 0}
    assert PruningPolicy.from_dict(old).to_dict() == old  # stored policies and their search keys do not move
    pol = PruningPolicy.from_dict({**old, "drop_layers": [2], "reconstruct": "least_squares"})
    assert pol.to_dict()["drop_layers"] == [2] and pol.to_dict()["reconstruct"] == "least_squares"
    with pytest.raises(PolicyError, match="names a layer beyond the model's 2 encoder layers"):
        pol.check_layers(2)
    with pytest.raises(PolicyError, match="would remove every one of the model's 2 encoder layers"):
        PruningPolicy.from_dict({**old, "drop_layer_count": 2}).check_layers(2)
