"""run_trial end to end on a tiny model: exact sparsities, baseline cache, early stop, distillation, int8."""

from __future__ import annotations

import copy

import json
from pathlib import Path

import pytest
import torch

from autoprune.config import RunConfig
from autoprune.errors import PolicyError, TrialFailed
from autoprune.policy import PruningPolicy, RetrainBudget
from autoprune.pruner import PruneRecord
from autoprune.train import baseline_dir, baseline_metrics, distillation_loss, ensure_baseline
from autoprune.trial import TrialStopped, run_trial
from conftest import tiny_config_dict


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    # 4 heads x 64 neurons per layer, 3 layers; the baseline is trained once for the module
    return RunConfig.model_validate(tiny_config_dict(tmp_path_factory.mktemp("trial"), layers=3, baseline_steps=60))


@pytest.fixture(scope="module")
def cfg8(cfg):
    """The same run timed in ONNX Runtime, where int8 policies run (the same cached baseline)."""
    from conftest import int8_measure

    return RunConfig.model_validate(int8_measure(cfg.model_dump(mode="json")))


def test_baseline_is_cached_and_keyed(cfg):
    path = ensure_baseline(cfg, progress=False)
    metrics = json.loads((path / "metrics.json").read_text())
    mtime = (path / "metrics.json").stat().st_mtime
    assert ensure_baseline(cfg, progress=False) == path and (path / "metrics.json").stat().st_mtime == mtime
    assert metrics["steps"] == 60 and 0 <= metrics["test_accuracy"] <= 1
    other = cfg.model_copy(update={"baseline": cfg.baseline.model_copy(update={"steps": 61})})
    assert baseline_dir(other) != path
    # which validation rows trials are scored on does not change the dense model
    narrower = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_validation_samples": 16})})
    assert baseline_dir(narrower) == path
    # ...but the dense validation numbers the search compares against are those of the narrower rows
    assert baseline_metrics(cfg, path) == metrics
    narrow = baseline_metrics(narrower, path)
    assert narrow["validation_n"] == 16 and metrics["validation_n"] == 64
    assert narrow["validation_rows"]["max_samples"] == 16 and narrow["test_accuracy"] == metrics["test_accuracy"]


def test_zero_sparsity_keeps_dense_accuracy(cfg):
    res = run_trial(cfg, PruningPolicy.uniform("l1", 3, heads=0.0, ffn=0.0, retrain_steps=0))
    assert res.accuracy == res.dense_accuracy and res.accuracy_drop == 0
    assert res.heads_per_layer == [4, 4, 4] and res.flops_reduction == 1.0 and res.params == res.dense_params


@pytest.mark.parametrize("criterion", ["random", "gradient", "l1", "l2"])
def test_structured_sparsities_are_exact_per_layer(cfg, criterion):
    pol = PruningPolicy(criterion=criterion, head_sparsity=[0.0, 0.25, 0.75], ffn_sparsity=[0.5, 0.1, 0.9],
                        retrain={"steps": 4}, iterative_steps=2)
    res = run_trial(cfg, pol)
    assert res.heads_per_layer == [4, 3, 1]
    assert res.ffn_per_layer == [32, 58, 6]  # 64 - round(s * 64)
    assert [len(k) for k in res.kept_heads] == res.heads_per_layer
    assert res.flops < res.dense_flops and res.flops_reduction > 1
    assert res.speed_label == "measured" and res.speedup > 0 and res.retrain_steps == 4
    assert set(res.phase_seconds) >= {"load", "prune", "reconstruct", "retrain", "quantize", "evaluate", "measure",
                                      "total"}
    # kept units live in the record, not in the policy
    record = PruneRecord.from_dict(res.prune_record)
    assert "kept_heads" not in res.policy and record.kept_heads == res.kept_heads and record.steps == 2


def test_a_record_is_reapplied_exactly(cfg, tmp_path):
    from autoprune.serialization import load_pruned

    pol = PruningPolicy(criterion="random", head_sparsity=[0.5] * 3, ffn_sparsity=[0.5] * 3, retrain={"steps": 0})
    first = run_trial(cfg, pol, save_dir=str(tmp_path / "first"))
    other_seed = pol.model_copy(update={"seed": 1})  # random scores of another seed would keep other units
    assert run_trial(cfg, other_seed).kept_heads != first.kept_heads
    again = run_trial(cfg, other_seed, record=PruneRecord.from_dict(first.prune_record), save_dir=str(tmp_path / "again"))
    assert again.kept_heads == first.kept_heads and again.kept_neurons == first.kept_neurons
    assert again.accuracy == first.accuracy
    a, b = load_pruned(tmp_path / "first").state_dict(), load_pruned(tmp_path / "again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_retraining_reports_the_pruned_accuracy(cfg):
    pol = PruningPolicy.uniform("l1", 3, heads=0.5, ffn=0.5, retrain_steps=0)
    res = run_trial(cfg, pol)
    assert res.retrain_steps == 0 and res.phase_seconds["retrain"] == 0.0
    assert res.accuracy_pruned == res.accuracy and res.history == [[0, res.accuracy]]
    # with retraining, the accuracy right after pruning is that of the same cut without retraining
    trained = run_trial(cfg, pol.model_copy(update={"retrain": RetrainBudget(steps=6)}))
    assert trained.accuracy_pruned == res.accuracy and trained.kept_heads == res.kept_heads
    assert trained.retrain_steps == 6 and trained.phase_seconds["retrain"] > 0


def test_layers_dropped_by_count_and_by_full_sparsity(cfg, tmp_path):
    from autoprune.models import get_adapter
    from autoprune.serialization import load_pruned

    pol = PruningPolicy(criterion="l1", head_sparsity=[0.5, 0.5, 0.5], ffn_sparsity=[0.5, 0.5, 0.5],
                        drop_layer_count=1, retrain={"steps": 2})
    res = run_trial(cfg, pol, save_dir=str(tmp_path / "d"))
    dropped = res.prune_record["dropped_layers"]
    assert len(dropped) == 1 and res.heads_per_layer == [2, 2] and res.kept_heads[dropped[0]] == []
    model = load_pruned(tmp_path / "d")
    assert get_adapter(model).shape(model) == ([2, 2], [32, 32])
    full = run_trial(cfg, PruningPolicy(criterion="l1", head_sparsity=[0.0, 1.0, 0.0], ffn_sparsity=[0.0, 0.0, 0.0],
                                        iterative_steps=2, retrain={"steps": 2}))
    assert full.prune_record["dropped_layers"] == [1] and full.heads_per_layer == [4, 4]
    assert full.flops < full.dense_flops


def test_reconstruction_runs_after_the_cut(cfg, monkeypatch):
    import sys
    import types

    seen = []

    class Targets:  # the dense targets, computed once per worker on the calibration batches
        @classmethod
        def compute(cls, dense, batches):
            t = cls()
            t.batches, t.seconds = list(batches), 0.0
            return t

    def fake(pruned, dense, batches, *, layer_map):
        seen.append((len(dense.batches), batches, layer_map))
        return [{"layer": i} for i in layer_map]

    monkeypatch.setitem(sys.modules, "autoprune.reconstruct",
                        types.SimpleNamespace(reconstruct_layers=fake, DenseTargets=Targets))
    res = run_trial(cfg, PruningPolicy.uniform("l1", 3, heads=0.5, ffn=0.5, retrain_steps=0,
                                               reconstruct="least_squares", calibration={"batches": 3}))
    assert seen == [(3, None, [0, 1, 2])]
    assert res.prune_record["reconstruction"] == [{"layer": 0}, {"layer": 1}, {"layer": 2}]


def test_an_unstructured_record_is_not_replayed(cfg):
    rec = PruneRecord(criterion="l1", granularity="unstructured", kept_heads=None, kept_neurons=None,
                      dropped_layers=[], heads_per_layer=[4] * 3, ffn_per_layer=[64] * 3)
    with pytest.raises(PolicyError, match="holds no masks"):
        run_trial(cfg, PruningPolicy.uniform("l1", 3, weights=0.5), record=rec)


def test_unstructured_is_labelled_size_only(cfg):
    res = run_trial(cfg, PruningPolicy(criterion="l1", granularity="unstructured",
                                       weight_sparsity=[0.5, 0.5, 0.5], retrain={"steps": 3}))
    assert res.speed_label == "size-only"
    from autoprune.trial import _speed_label

    assert _speed_label(True, True) == "int8 measured; zeros size-only" and _speed_label(False, True) == "measured"
    assert res.weight_sparsity == pytest.approx(0.5, abs=0.01)
    assert res.params < res.dense_params


def test_on_eval_can_stop_a_trial(cfg):
    seen = []

    def stop(step, acc):
        seen.append((step, acc))
        return True

    with pytest.raises(TrialStopped) as exc:
        run_trial(cfg, PruningPolicy.uniform("l1", 3, heads=0.5, ffn=0.5, retrain_steps=10), on_eval=stop)
    assert seen and exc.value.history[0][0] == 5


def _minority_label(cfg) -> int:
    rows = Path(cfg.data.files["validation"]).read_text().splitlines()[1:]
    labels = [int(line.rsplit("\t", 1)[1]) for line in rows]
    return min((0, 1), key=labels.count)


def _wrecking_finetune(minority: int, wreck_call: int):
    """A stand-in retraining that does nothing until its ``wreck_call``-th call, which makes the
    classifier answer the validation split's minority label for every sentence."""
    calls = []

    def finetune(model, batches, *, steps, **_):
        calls.append(steps)
        if len(calls) == wreck_call:
            head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 2][-1]
            with torch.no_grad():
                head.weight.zero_()
                head.bias.copy_(torch.tensor([10.0, -10.0] if minority == 0 else [-10.0, 10.0]))
        return [0.0] * steps
    return finetune


@pytest.mark.parametrize("iterative", [1, 2])
def test_keep_best_undoes_a_retraining_that_lowered_accuracy(cfg, monkeypatch, iterative):
    import autoprune.train as train_mod

    pol = PruningPolicy.uniform("l1", 3, heads=0.25, ffn=0.25, retrain_steps=10)
    pol = pol.model_copy(update={"iterative_steps": iterative})
    best = pol.model_copy(update={"retrain": pol.retrain.model_copy(update={"keep_best": True})})
    cut = run_trial(cfg, pol.model_copy(update={"retrain": RetrainBudget(steps=0), "iterative_steps": 1}))
    monkeypatch.setattr(train_mod, "finetune", _wrecking_finetune(_minority_label(cfg), iterative))
    wrecked = run_trial(cfg, pol)
    assert wrecked.accuracy < cut.accuracy  # otherwise this test could not tell the two models apart
    assert wrecked.retrain_undone is None
    monkeypatch.setattr(train_mod, "finetune", _wrecking_finetune(_minority_label(cfg), iterative))
    res = run_trial(cfg, best)
    # the model kept is the one before the last retraining phase: the full cut, as if never retrained
    assert res.retrain_undone is True and res.retrain_steps == 10
    assert res.accuracy == cut.accuracy > wrecked.accuracy
    assert best.summary().endswith("10st-best") and best.to_dict()["retrain"]["keep_best"] is True
    assert "keep_best" not in pol.to_dict()["retrain"]  # left out at its default


def test_keep_best_keeps_a_retraining_that_did_not_lower_accuracy(cfg8, monkeypatch):
    import autoprune.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "finetune", lambda model, batches, *, steps, **_: calls.append(steps) or [0.0])
    pol = PruningPolicy.uniform("l1", 3, heads=0.25, ffn=0.25, retrain_steps=10, quantize=True)
    pol = pol.model_copy(update={"qat": True, "retrain": pol.retrain.model_copy(update={"keep_best": True})})
    res = run_trial(cfg8, pol)  # a tie (nothing changed) keeps the retrained model
    assert calls == [10] and res.retrain_undone is False


def test_nan_loss_fails_the_trial(cfg, monkeypatch):
    import autoprune.train as train_mod

    ensure_baseline(cfg, progress=False)  # train the baseline before the loss is poisoned
    real = train_mod.F.cross_entropy
    calls = []

    def poisoned(logits, labels, *a, **kw):  # the third training step produces NaN
        calls.append(1)
        loss = real(logits, labels, *a, **kw)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    with pytest.raises(TrialFailed, match="loss became nan at step 3 of 5"):
        run_trial(cfg, PruningPolicy.uniform("l1", 3, heads=0.5, ffn=0.5, retrain_steps=5))


def test_policy_for_a_different_depth_is_refused(cfg):
    with pytest.raises(PolicyError, match="has 6 entries but the model has 3"):
        run_trial(cfg, PruningPolicy.uniform("l1", 6, heads=0.5))


def test_distillation_loss_moves_student_towards_teacher():
    torch.manual_seed(0)
    student = torch.nn.Linear(8, 3)
    x = torch.randn(64, 8)
    teacher_logits = (x @ torch.randn(8, 3) * 2).detach()  # a teacher the student can imitate
    labels = teacher_logits.argmax(-1)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    def kl():
        return torch.nn.functional.kl_div(torch.log_softmax(student(x), -1), torch.log_softmax(teacher_logits, -1),
                                          reduction="batchmean", log_target=True).item()
    before = kl()
    for _ in range(50):
        loss = distillation_loss(student(x), teacher_logits, labels, weight=1.0, temperature=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert kl() < 0.2 * before


def test_distilled_and_quantized_trial(cfg8, tmp_path):
    from autoprune.onnx_export import is_int8
    from autoprune.serialization import load_pruned, saved_quantization

    pol = PruningPolicy.uniform("l1", 3, heads=0.5, ffn=0.5, retrain_steps=4, distillation={"weight": 0.5},
                                quantize=True)
    res = run_trial(cfg8, pol, save_dir=str(tmp_path / "q"))
    fp32 = run_trial(cfg8, pol.model_copy(update={"quantize": False}))
    assert res.heads_per_layer == fp32.heads_per_layer and res.targets["targets"]["ort"]["int8"]
    assert not fp32.targets["targets"]["ort"]["int8"] and fp32.targets["targets"]["torch"]["speedup"] > 0
    assert is_int8(load_pruned(tmp_path / "q"))  # an int8 policy's model comes back int8 (ONNX Runtime)
    assert saved_quantization(tmp_path / "q") == "dynamic_int8"
    assert load_pruned(tmp_path / "q", as_float=True).config.autoprune["heads_per_layer"] == [2, 2, 2]


def test_int8_policy_is_evaluated_after_quantization(cfg8, monkeypatch):
    # a stand-in "quantizer" whose model always answers label 1: the trial's accuracy must be that
    # model's accuracy, not the float model's (int8 is not free on the objective)
    import types

    import autoprune.trial as trial_mod

    class AlwaysOne(torch.nn.Module):
        def forward(self, input_ids, **_):
            return types.SimpleNamespace(logits=torch.tensor([[-10.0, 10.0]]).expand(len(input_ids), 2))

    pol = PruningPolicy.uniform("l1", 3, heads=0.25, ffn=0.25, retrain_steps=0, quantize=True)
    rows = Path(cfg8.data.files["validation"]).read_text().splitlines()[1:]
    labels = [int(line.rsplit("\t", 1)[1]) for line in rows]
    constant = labels.count(1) / len(labels)
    float_acc = run_trial(cfg8, pol.model_copy(update={"quantize": False})).accuracy
    assert float_acc != pytest.approx(constant)  # otherwise this test could not tell the two apart
    monkeypatch.setattr(trial_mod, "onnx_int8_model", lambda model, threads: AlwaysOne())
    res = run_trial(cfg8, pol)
    assert res.accuracy == pytest.approx(constant)
    assert res.accuracy_drop == pytest.approx(res.dense_accuracy - constant)


def test_int8_policy_without_retraining_is_scored_once_and_timed_as_scored(cfg8, monkeypatch):
    import autoprune.measure as measure_mod
    import autoprune.onnx_export as ox

    scored, exported = [], []
    real_eval, real_export = measure_mod.evaluate_split, ox.export_onnx
    monkeypatch.setattr(measure_mod, "evaluate_split", lambda model, *a, **kw: scored.append(type(model).__name__)
                        or real_eval(model, *a, **kw))
    monkeypatch.setattr(ox, "export_onnx", lambda model, path, **kw: exported.append((Path(path).name, kw.get("int8")))
                        or real_export(model, path, **kw))
    pol = PruningPolicy.uniform("l1", 3, heads=0.25, ffn=0.25, retrain_steps=0, quantize=True)
    run_trial(cfg8, pol)  # loads and scores the dense baseline once per process
    scored.clear()
    exported.clear()
    res = run_trial(cfg8, pol)
    assert scored == ["OnnxClassifier"]  # no float scoring after the cut (the dense metrics are cached)
    assert res.accuracy_pruned == res.accuracy
    assert [e for e in exported if e[1]] == [("model.int8.onnx", True)]  # the ort target timed that same file
    assert res.targets["targets"]["ort"]["int8"] is True
    # with retraining the cut is scored in float first, then the int8 model
    scored.clear()
    run_trial(cfg8, pol.model_copy(update={"retrain": pol.retrain.model_copy(update={"steps": 4})}))
    assert scored == ["BertForSequenceClassification", "OnnxClassifier"]


def test_float_policy_timed_in_onnx_runtime_is_scored_there_once_and_that_file_is_timed(cfg, cfg8, monkeypatch):
    import autoprune.measure as measure_mod
    import autoprune.onnx_export as ox

    pol = PruningPolicy.uniform("l1", 3, heads=0.25, ffn=0.25, retrain_steps=0)
    run_trial(cfg8, pol)  # loads and scores the dense baseline once per process
    scored, exported = [], []
    real_eval, real_export = measure_mod.evaluate_split, ox.export_onnx
    monkeypatch.setattr(measure_mod, "evaluate_split", lambda model, *a, **kw: scored.append(type(model).__name__)
                        or real_eval(model, *a, **kw))
    monkeypatch.setattr(ox, "export_onnx", lambda model, path, **kw: exported.append(Path(path).name)
                        or real_export(model, path, **kw))
    res = run_trial(cfg8, pol)
    assert scored == ["OnnxClassifier"] and exported == ["model.onnx"]  # scored once, exported once, timed as is
    assert res.accuracy_pruned == res.accuracy and res.targets["targets"]["ort"]["int8"] is False
    eager = run_trial(cfg, pol)  # no ONNX Runtime target: scored in PyTorch, the same predictions
    assert eager.accuracy == res.accuracy and eager.macro_f1 == pytest.approx(res.macro_f1)


def test_gradient_scores_of_the_dense_model_are_computed_once_per_process_and_cut_as_fresh_ones(cfg, monkeypatch):
    import autoprune.criteria as crit_mod
    from autoprune.pruner import prune
    from autoprune.trial import _context, _calibration_key, _Run

    calls = []
    real = crit_mod.accumulate_gradients
    monkeypatch.setattr(crit_mod, "accumulate_gradients", lambda model, batches: calls.append(1) or real(model, batches))
    pol = PruningPolicy.uniform("gradient", 3, heads=0.5, ffn=0.5, retrain_steps=0)
    first = run_trial(cfg, pol)  # fills the cache (or finds it filled)
    calls.clear()
    second = run_trial(cfg, pol.model_copy(update={"head_sparsity": [0.25] * 3, "seed": 5}))
    assert calls == []  # another policy's first cut reads the cached scores: no backward pass
    assert second.prune_record["kept_heads"] != first.prune_record["kept_heads"]
    # the cached scores cut as scores computed afresh on a copy of the dense model do
    ctx = _context(cfg, progress=False)
    model = copy.deepcopy(ctx.dense)
    key = _calibration_key(_Run(cfg, pol, ctx, model, None, False))
    fresh = prune(model, pol, ctx.calibration_batches(*key))
    assert fresh.kept_heads == first.prune_record["kept_heads"] and fresh.kept_neurons == first.prune_record["kept_neurons"]
    # an iterative schedule's later cuts score the model as it stands, not the dense one
    calls.clear()
    run_trial(cfg, pol.model_copy(update={"iterative_steps": 2, "retrain": pol.retrain.model_copy(update={"steps": 2})}))
    assert len(calls) == 1


def test_interrupted_finetune_resumes_to_the_same_weights(tmp_path):
    from autoprune.data import Split, train_batches
    from autoprune.models import load_model
    from autoprune.train import finetune
    from conftest import make_tiny_model

    path = make_tiny_model(tmp_path / "m", "bert")
    g = torch.Generator().manual_seed(0)
    split = Split([torch.randint(5, 30, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (64,))],
                  [i % 2 for i in range(64)])

    def run(ckpt=None, stop_at=None):
        model = load_model(str(path))
        hooks = None
        if stop_at:
            def boom(step):
                raise KeyboardInterrupt
            hooks = {stop_at: boom}
        try:
            finetune(model, train_batches(split, 8, seed=1, pad_id=0), steps=10, learning_rate=1e-3, seed=0,
                     hooks=hooks, progress=False, checkpoint=ckpt, checkpoint_every=5)
        except KeyboardInterrupt:
            pass
        return model

    straight = run()
    ckpt = tmp_path / "b.ckpt"
    run(ckpt, stop_at=7)
    assert ckpt.is_file()
    resumed = run(ckpt)
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)


def test_final_split_test_reports_test_accuracy_for_both_models(cfg):
    import json as _json

    res = run_trial(cfg, PruningPolicy.uniform("l1", 3, heads=0.0, ffn=0.0, retrain_steps=0), final_split="test")
    metrics = _json.loads((ensure_baseline(cfg) / "metrics.json").read_text())
    assert res.eval_split == "test" and res.eval_n == metrics["test_n"]
    assert res.dense_accuracy == pytest.approx(metrics["test_accuracy"]) and res.accuracy == res.dense_accuracy
    assert res.accuracy_pruned == res.accuracy  # the accuracy after pruning is on the reported split too


def test_int8_scores_depend_on_batch_companions_so_int8_is_scored_one_row_at_a_time(cfg8, monkeypatch):
    # dynamic int8 picks one activation scale per tensor: a row's logits change with what it is batched with
    import autoprune.data as data_mod
    from autoprune.measure import eval_batch_size
    from autoprune.models import load_model
    from autoprune.onnx_export import onnx_int8_model
    from autoprune.train import ensure_baseline

    cfg = cfg8
    model = load_model(str(ensure_baseline(cfg, progress=False)))
    g = torch.Generator().manual_seed(0)
    row = torch.randint(5, 30, (1, 8), generator=g)
    loud = torch.randint(5, 30, (1, 8), generator=g)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[loud[0, 0]] *= 50  # a row with an outlier activation
    q = onnx_int8_model(model)
    assert eval_batch_size(q, 128) == 1 and eval_batch_size(model, 128) == 128
    with torch.no_grad():
        alone = q(input_ids=row, attention_mask=torch.ones_like(row)).logits
        batched = q(input_ids=torch.cat([row, loud]), attention_mask=torch.ones(2, 8, dtype=torch.long)).logits[:1]
    assert not torch.allclose(alone, batched, atol=1e-4)

    # the trial scores the int8 model at batch 1 and a float model at eval_batch_size
    sizes: list[int] = []
    real = data_mod.eval_batches
    monkeypatch.setattr(data_mod, "eval_batches", lambda split, bs, pad: (sizes.append(bs), real(split, bs, pad))[1])
    pol = PruningPolicy.uniform("l1", 3, heads=0.25, ffn=0.25, retrain_steps=0, quantize=True)
    run_trial(cfg, pol)
    assert sizes[-1] == 1
    sizes.clear()
    run_trial(cfg, pol.model_copy(update={"quantize": False}))
    assert sizes[-1] == cfg.eval_batch_size
