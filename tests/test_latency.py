"""The latency table: its arithmetic against a known cost model, its cache, a real build, and a trial
whose speed it predicts."""

from __future__ import annotations

import json
import random

import pytest

from conftest import make_tiny_model, tiny_config_dict

from autoprune import latency as L
from autoprune.config import RunConfig, Target
from autoprune.models import get_adapter, load_model
from autoprune.surgery import drop_layers, prune_structured

EMBED, PER_HEAD, PER_NEURON, PER_LAYER = 7.0, 3.0, 0.25, 2.0  # ms of the additive cost model below


def cost_ms_shape(heads, ffn) -> float:
    """Latency of a shape under an additive cost model (what the table assumes)."""
    return EMBED + sum(PER_LAYER + PER_HEAD * h + PER_NEURON * n for h, n in zip(heads, ffn))


def cost_ms(model, int8: bool = False) -> float:
    """A model's latency under the cost model, halved for int8."""
    ms = cost_ms_shape(*get_adapter(model).shape(model))
    return ms / 2 if int8 else ms


@pytest.fixture
def modelled(monkeypatch):
    """measure_target replaced by the cost model; the calls it got are counted."""
    calls = []

    def fake(dense, pruned, target, *, int8=False, onnx_file=None):
        calls.append((target, int8))
        return {"dense_ms": cost_ms(dense), "pruned_ms": cost_ms(pruned, int8)}

    monkeypatch.setattr("autoprune.runtimes.measure_target", fake)
    monkeypatch.setattr(L, "_TABLES", {})
    return calls


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("lt") / "m", layers=4, heads=4, ffn=64)
    return load_model(str(path), num_labels=2).eval()


def _random_cut(dense, rng):
    """A copy of ``dense`` with random heads and neurons per layer and perhaps a dropped layer."""
    import copy

    model = copy.deepcopy(dense)
    heads, ffn = get_adapter(model).shape(model)
    prune_structured(model, kept_heads=[list(range(rng.randint(1, h))) for h in heads],
                     kept_neurons=[list(range(rng.randint(1, n))) for n in ffn])
    if rng.random() < 0.5:
        drop_layers(model, [rng.randrange(len(heads))])
    return model


@pytest.mark.parametrize("int8", [False, True])
def test_an_additive_model_is_predicted_exactly_from_uniform_cuts(dense, modelled, int8):
    table = L.build_latency_table(dense, Target(runtime="onnxruntime"), int8=int8, head_points=3, neuron_points=4)
    assert table.head_grid == [1, 3, 4] and table.neuron_grid == [1, 16, 32, 48, 64]
    assert table.head_share[-1] == table.neuron_share[-1] == 0.0 and table.num_layers == 4
    assert len(modelled) == 2 + 4 + 1 + int8  # heads, neurons, half the layers dropped (and the int8 dense)
    assert {t.repeats for t, _ in modelled} == {L.REPEATS} and {t.batch1 for t, _ in modelled} == {False}
    assert table.base == (0.5 if int8 else 1.0)
    rng = random.Random(0)
    for _ in range(20):  # the cost model is linear in heads and neurons: interpolation is exact
        model = _random_cut(dense, rng)
        want = cost_ms(dense) / cost_ms(model, int8)
        assert table.predict(*get_adapter(model).shape(model)) == pytest.approx(want, rel=1e-9)


def test_a_table_is_built_once_then_read_from_memory_or_its_cache_file(dense, modelled, tmp_path, monkeypatch):
    target = Target(runtime="onnxruntime")
    first = L.latency_table(dense, target, cache_dir=tmp_path)
    built = len(modelled)
    assert built and L.latency_table(dense, target, cache_dir=tmp_path) is first  # from memory
    monkeypatch.setattr(L, "_TABLES", {})  # a new process: from the file, nothing timed
    again = L.latency_table(dense, target, cache_dir=tmp_path)
    assert again == first and len(modelled) == built
    path = tmp_path / f"{first.key}.json"
    assert json.loads(path.read_text())["key"] == first.key
    # another target, or int8, is another table
    assert L.latency_table(dense, target.model_copy(update={"batch_size": 8}), cache_dir=tmp_path).key != first.key
    assert L.latency_table(dense, target, int8=True, cache_dir=tmp_path).int8
    # a damaged file is rebuilt, not trusted
    monkeypatch.setattr(L, "_TABLES", {})
    path.write_text("{not json")
    n = len(modelled)
    rebuilt = L.latency_table(dense, target, cache_dir=tmp_path)
    assert len(modelled) == n + built and rebuilt.head_share == first.head_share
    assert json.loads(path.read_text())["key"] == first.key


def test_a_table_built_for_real_in_torch(dense):
    table = L.build_latency_table(dense, Target(runtime="torch", batch_size=2, seq_len=8), head_points=2,
                                  neuron_points=2, repeats=3)
    assert table.head_grid == [1, 2, 4] and table.neuron_grid == [1, 32, 64] and table.dense_ms > 0
    assert table.predict([4] * 4, [64] * 4) == 1.0  # the dense shape
    assert table.machine["cpus"] and table.target["repeats"] == 3
    with pytest.raises(ValueError, match="one of each per layer"):
        table.predict([4, 4], [64])
    with pytest.raises(ValueError, match="table's model has 4"):
        table.predict([4] * 5, [64] * 5)
    with pytest.raises(ValueError, match="unpruned model"):
        import copy

        cut = prune_structured(copy.deepcopy(dense), kept_heads=[[0], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
        L.build_latency_table(cut, Target(runtime="torch"))


def test_a_trial_on_a_table_rung_reports_the_predicted_speedup(tmp_path, modelled):
    from autoprune.policy import PruningPolicy
    from autoprune.trial import run_trial

    raw = tiny_config_dict(tmp_path)
    raw["measure"] = {**raw["measure"], "latency_table": True}
    config = RunConfig.model_validate(raw)
    res = run_trial(config, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=0))
    files = list((tmp_path / "runs" / "cache" / "latency").glob("*.json"))
    assert len(files) == 1
    table = L.LatencyTable.from_dict(json.loads(files[0].read_text()))
    assert res.speed_label == "predicted" and res.targets is None
    assert res.machine == table.machine and res.machine["cpu"]  # what the prediction is valid for
    assert res.speedup == pytest.approx(table.predict(res.heads_per_layer, res.ffn_per_layer))
    assert res.speedup == pytest.approx(cost_ms_shape([4, 4], [64, 64]) / cost_ms_shape(res.heads_per_layer,
                                                                                        res.ffn_per_layer))
    assert res.heads_per_layer == [2, 2] and res.ffn_per_layer == [32, 32]
