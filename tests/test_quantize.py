"""int8: the quantization-aware simulation matches ONNX Runtime's dynamic int8, the swap is reversible,
an int8 policy with ``qat`` retrains through it, and int8 policies need an onnxruntime objective."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.config import RunConfig
from autoprune.errors import PolicyError
from autoprune.policy import PruningPolicy
from autoprune.onnx_export import is_int8, onnx_int8_model
from autoprune.quantize import FakeQuantLinear, fake_quantized, has_fake_quant
from autoprune.quantize import quantize_onnx_int8
from conftest import int8_measure, tiny_config_dict


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tiny_config_dict(tmp_path_factory.mktemp("qat"), layers=2, baseline_steps=40)
    return RunConfig.model_validate(int8_measure(d))


def test_fake_quant_linear_computes_what_onnx_runtime_int8_computes_for_each_sentence(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    lin = nn.Linear(48, 96)
    x = torch.randn(3, 7, 48) * torch.tensor([0.5, 3.0, 20.0]).view(3, 1, 1) + 0.3  # three very different scales
    torch.onnx.export(lin, (x[:1],), str(tmp_path / "f.onnx"), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "t"}}, dynamo=False)
    sess = ort.InferenceSession(str(quantize_onnx_int8(tmp_path / "f.onnx", tmp_path / "q.onnx")),
                                providers=["CPUExecutionProvider"])
    fake = FakeQuantLinear(lin)(x).detach()
    for i in range(3):  # int8 is scored one sentence at a time: each row gets its own input scale
        row_int8 = torch.from_numpy(sess.run(["y"], {"x": x[i:i + 1].numpy()})[0])
        assert torch.allclose(fake[i:i + 1], row_int8, atol=1e-4), (fake[i:i + 1] - row_int8).abs().max()
    # and the rounding is real: the float Linear differs from both by far more
    assert (lin(x) - fake).abs().max() > 1e-2


def test_fake_quantized_swaps_every_linear_and_restores_the_trained_originals():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
    originals = [model[0], model[2][0]]
    before = originals[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the swap: same parameter objects
    x = torch.randn(5, 6)
    with fake_quantized(model):
        assert has_fake_quant(model) and isinstance(model[2][0], FakeQuantLinear)
        loss = model(x).pow(2).sum()
        loss.backward()  # straight-through: gradients reach the float weights
        opt.step()
    assert not has_fake_quant(model)
    assert model[0] is originals[0] and model[2][0] is originals[1]
    assert originals[0].weight.grad is not None and not torch.equal(originals[0].weight, before)
    # an exception inside the block still restores the model
    with pytest.raises(RuntimeError), fake_quantized(model):
        raise RuntimeError("boom")
    assert not has_fake_quant(model)


def test_fake_quantized_trains_a_masked_linear_and_keeps_its_pruned_weights_zero():
    # unstructured policies retrain under torch.nn.utils.prune masks: the weight is recomputed from
    # weight_orig * weight_mask every forward, so two training steps must work and respect the mask
    from autoprune.surgery import make_unstructured_permanent, prune_unstructured

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    mask = (torch.rand(8, 6) > 0.5).float()
    prune_unstructured(model, {"0": mask})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with fake_quantized(model):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 6)).pow(2).sum().backward()
            opt.step()
        masked = model(torch.ones(1, 6))
    assert torch.isfinite(masked).all()
    make_unstructured_permanent(model)
    assert torch.all(model[0].weight[mask == 0] == 0) and torch.any(model[0].weight[mask == 1] != 0)


def test_fake_quantized_bert_predicts_the_int8_model_one_sentence_at_a_time(cfg):
    from autoprune.models import load_model
    from autoprune.train import ensure_baseline

    model = load_model(str(ensure_baseline(cfg, progress=False))).eval()
    q = onnx_int8_model(model)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(5, 30, (1, 9), generator=g)
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad(), fake_quantized(model):
            sim = model(**kw).logits
        with torch.no_grad():
            real = q(**kw).logits
            flt = model(**kw).logits
        assert (sim - real).abs().max() < 1e-3 < (flt - real).abs().max() + 1e-3


def test_fake_quantized_bert_scores_a_padded_batch_as_one_sentence_at_a_time_in_eval_mode(cfg):
    from autoprune.data import collate
    from autoprune.measure import eval_batch_size
    from autoprune.models import load_model
    from autoprune.quantize import _fake_quant_input, _fake_quant_weight
    from autoprune.train import ensure_baseline

    model = load_model(str(ensure_baseline(cfg, progress=False))).eval()
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(5, 30, (n,), generator=g).tolist() for n in (3, 11, 6, 17, 9)]
    with torch.no_grad():  # a loud padding token (a spike that survives LayerNorm): a scale that saw the
        emb = model.bert.embeddings.word_embeddings.weight  # padding would move the sentence's logits
        emb[0] = 0.0
        emb[0, 0] = 1e3
    batch = collate(rows, None, pad_id=0)
    with torch.no_grad(), fake_quantized(model):
        assert eval_batch_size(model, 64) == 64  # the simulation scores in batches ...
        batched = model(**batch).logits
        alone = torch.cat([model(**collate([r], None, pad_id=0)).logits for r in rows])
        assert all(not m.training for m in model.modules())  # the wrappers take the model's mode
        for m in model.modules():  # the same batch with the scale over each whole padded row
            if isinstance(m, FakeQuantLinear):
                m.train()
        padded_scale = model(**batch).logits
        model.eval()
        # training keeps the row scale over real and padding positions alike (the reference run's
        # qat retraining); eval mode takes it over the real tokens only
        q0 = model.bert.encoder.layer[0].attention.self.query
        x = torch.randn(2, 5, model.config.hidden_size)
        x[1, 2:] *= 30  # loud padding positions in the second row
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=mask)  # records this call's mask
        w = _fake_quant_weight(q0.linear.weight)
        row_scale = torch.nn.functional.linear(_fake_quant_input(x), w, q0.linear.bias)
        token_scale = torch.nn.functional.linear(_fake_quant_input(x, mask), w, q0.linear.bias)
        assert torch.equal(q0(x), token_scale) and not torch.allclose(token_scale[1, :2], row_scale[1, :2])
        model.train()
        assert torch.equal(q0(x), row_scale)
        model.eval()
    # logits here are ~0.02; measured (8-bit inputs): 0 to 1e-8 batched against 2e-6 with a scale that saw
    # the padding
    assert (batched - alone).abs().max() < 2e-7, (batched - alone).abs().max()
    assert (padded_scale - alone).abs().max() > 1e-6  # the check above would catch a scale that saw padding
    assert not model._forward_pre_hooks  # the mask recorder leaves with the wrappers


def test_qat_needs_quantize_and_is_named_in_the_summary():
    with pytest.raises(PolicyError, match="needs 'quantize: true'"):
        PruningPolicy.from_dict({"criterion": "l1", "head_sparsity": [0.5], "ffn_sparsity": [0.5], "qat": True})
    pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, quantize=True, qat=True)
    assert pol.summary().endswith(" int8-qat")
    assert PruningPolicy.from_json(pol.to_json()) == pol
    # a policy stored before qat existed loads as plain int8
    old = {k: v for k, v in pol.to_dict().items() if k != "qat"}
    assert PruningPolicy.from_dict(old).qat is False


def test_qat_trial_retrains_through_the_rounding_and_saves_a_plain_model(cfg, tmp_path, monkeypatch):
    import autoprune.train as train_mod
    import autoprune.trial as trial_mod
    from autoprune.serialization import load_pruned

    seen: list[bool] = []
    real_finetune = train_mod.finetune

    def spy(model, *a, **kw):
        seen.append(has_fake_quant(model))
        return real_finetune(model, *a, **kw)

    monkeypatch.setattr(train_mod, "finetune", spy)
    pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=6, quantize=True, qat=True,
                                iterative_steps=2)
    res = trial_mod.run_trial(cfg, pol, save_dir=str(tmp_path / "qat"))
    plain = trial_mod.run_trial(cfg, pol.model_copy(update={"qat": False}), save_dir=str(tmp_path / "plain"))
    assert seen == [True, True, False, False]  # both retraining phases of the qat trial, neither of the other
    assert res.policy["qat"] is True and res.heads_per_layer == plain.heads_per_layer == [2, 2]
    assert is_int8(load_pruned(tmp_path / "qat")) and is_int8(load_pruned(tmp_path / "plain"))  # loads as int8
    a, b = load_pruned(tmp_path / "qat", as_float=True), load_pruned(tmp_path / "plain", as_float=True)
    assert not has_fake_quant(a) and set(a.state_dict()) == set(b.state_dict())  # no wrapper is saved
    ids = torch.randint(5, 30, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        la = a(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        lb = b(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not torch.allclose(la, lb)  # the same seed and batches: only the rounding in training differs


def test_unstructured_qat_trial_runs_through_both_pruning_steps(cfg):
    from autoprune.trial import run_trial

    pol = PruningPolicy.uniform("l1", 2, weights=0.6, retrain_steps=6, quantize=True, qat=True, iterative_steps=2)
    res = run_trial(cfg, pol)
    assert res.weight_sparsity == pytest.approx(0.6, abs=0.02) and res.speed_label.startswith("int8")


def test_an_int8_trial_is_scored_and_timed_in_onnx_runtime(cfg):
    from autoprune.trial import run_trial

    res = run_trial(cfg, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=0, quantize=True))
    ort_t, torch_t = res.targets["targets"]["ort"], res.targets["targets"]["torch"]
    assert res.targets["objective"] == "ort" and ort_t["int8"] and res.speedup == ort_t["speedup"] > 0
    assert torch_t["skipped"] == "int8 runs in ONNX Runtime only" and "speedup" not in torch_t
    assert res.phase_seconds["quantize"] > 0


def test_int8_without_an_onnxruntime_objective_is_one_clear_error(tmp_path):
    from autoprune.runtimes import TargetError
    from autoprune.trial import run_trial

    torch_only = RunConfig.model_validate(tiny_config_dict(tmp_path, layers=2))
    with pytest.raises(TargetError, match="int8 policies .* run in ONNX Runtime.*objective 'torch-cpu' is torch"):
        run_trial(torch_only, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, quantize=True))
    assert not (tmp_path / "runs" / "baselines").exists()  # refused before the baseline was trained
