"""Measurement targets (torch and ONNX Runtime), ONNX Runtime int8 export, the runtime and GPU checks,
and measurement pinned to a Ray custom resource (a local Ray with a fake ``bench`` resource)."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_tiny_model, tiny_config_dict
from typer.testing import CliRunner

from autoprune.config import MeasureConfig, RunConfig, config_from_dict
from autoprune.errors import ConfigError
from autoprune.onnx_export import export_onnx, onnx_inputs, onnx_session
from autoprune.measure import interleaved_times
from autoprune.models import get_adapter, load_model
from autoprune.quantize import is_onnx_int8
from autoprune.runtimes import (RESOURCE_SHARE, Target, TargetError, check_before_study, check_cluster, check_gpus,
                                check_targets, machine, measure_target, measure_targets, onnx_accuracy)
from autoprune.surgery import prune_structured

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")


def _cut(model, keep_heads: int, keep_ffn: int):
    """A structurally pruned copy keeping the first ``keep_heads`` heads and ``keep_ffn`` neurons per layer."""
    m = copy.deepcopy(model)
    heads, ffn = get_adapter(m).shape(m)
    prune_structured(m, [list(range(keep_heads))] * len(heads), [list(range(keep_ffn))] * len(ffn))
    return m.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(make_tiny_model(tmp_path_factory.mktemp("m") / "bert"))).eval()


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Big enough that a 75% cut is clearly faster than timer noise (4 layers, hidden 256, FFN 1024)."""
    path = make_tiny_model(tmp_path_factory.mktemp("w") / "bert", layers=4, heads=8, hidden=256, ffn=1024)
    return load_model(str(path)).eval()


# ----------------------------------------------------------------------------- timing
def test_interleaved_rotates_the_first_to_run():
    calls: list[str] = []
    fns = [lambda n=n: calls.append(n) for n in "abc"]
    times = interleaved_times(fns, warmup=1, repeats=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert [len(t) for t in times] == [3, 3, 3] and all(x >= 0 for t in times for x in t)


def test_onnxruntime_target_measures_pruned_against_dense_twin(wide):
    pruned = _cut(wide, 2, 256)
    t = Target(runtime="onnxruntime", batch_size=4, seq_len=32, warmup=2, repeats=7, batch1=True)
    rep = measure_target(wide, pruned, t)
    assert rep["runtime"] == "onnxruntime" and rep["threads"] == 1 and rep["int8"] is False
    assert rep["speedup"] == pytest.approx(rep["dense_ms"] / rep["pruned_ms"])
    assert rep["speedup"] > 1.3, rep  # 75% of heads and FFN cut: ~3x fewer FLOPs
    for sfx in ("", "_b1"):
        assert rep[f"dense_iqr_ms{sfx}"] >= 0 and rep[f"pruned_iqr_ms{sfx}"] >= 0
        assert 0 < rep[f"speedup_q1{sfx}"] <= rep[f"speedup_q3{sfx}"]
    # the same pair in eager PyTorch: a different runtime, the same structural gain
    rt = measure_target(wide, pruned, t.model_copy(update={"runtime": "torch", "name": "torch-cpu", "batch1": False}))
    assert rt["speedup"] > 1.3 and "speedup_b1" not in rt


def test_int8_target_times_the_onnxruntime_int8_model(wide):
    t = Target(runtime="onnxruntime", batch_size=8, seq_len=32, warmup=2, repeats=7)
    rep = measure_target(wide, wide, t, int8=True)
    assert rep["int8"] is True
    assert rep["speedup"] > 1.0, rep  # the same weights, int8 MatMulInteger against float MatMul


def test_dense_export_is_made_once_and_again_when_its_weights_change(tiny, monkeypatch, tmp_path):
    import autoprune.onnx_export as ox

    dense, made = copy.deepcopy(tiny), []
    real = ox.export_onnx
    monkeypatch.setattr(ox, "export_onnx", lambda model, path, **kw: made.append(Path(path).name) or real(model, path, **kw))
    t = Target(runtime="onnxruntime", batch_size=2, seq_len=8, warmup=0, repeats=3)
    for _ in range(2):
        measure_target(dense, _cut(dense, 1, 16), t)
    assert made == ["dense.onnx", "pruned.onnx", "pruned.onnx"]  # the dense twin exported once
    with torch.no_grad():  # an in-place change of the dense weights is seen: exported again
        next(dense.parameters()).add_(1.0)
    measure_target(dense, _cut(dense, 1, 16), t)
    assert made[3:] == ["dense.onnx", "pruned.onnx"]
    # a pruned model's ONNX file given as it is is timed, not exported again
    given = ox.export_onnx(_cut(dense, 1, 16), tmp_path / "given.onnx", int8=True)
    made.clear()
    rep = measure_target(dense, _cut(dense, 1, 16), t, int8=True, onnx_file=given)
    assert made == [] and rep["int8"] is True


# ----------------------------------------------------------------------------- int8 export
def test_int8_onnx_export_loads_and_stays_close_to_float(tiny, tmp_path):
    path = export_onnx(tiny, tmp_path / "q.onnx", int8=True)
    fp = export_onnx(tiny, tmp_path / "f.onnx")
    assert is_onnx_int8(path) and not is_onnx_int8(fp)
    assert path.stat().st_size < fp.stat().st_size  # int8 weights
    feed, names = onnx_inputs(tiny, seq_len=12, batch=1)
    q = onnx_session(path).run(["logits"], {n: feed[n].numpy() for n in names})[0]
    with torch.no_grad():
        ref = tiny(**feed).logits.numpy()
    scale = float(np.abs(ref).max())
    assert np.abs(q - ref).max() <= 0.1 * scale + 1e-3, (q, ref)


def test_onnx_accuracy_matches_pytorch(tmp_path):
    from autoprune.measure import evaluate_split
    from autoprune.train import ensure_baseline, load_task_data, load_tokenizer

    cfg = RunConfig.model_validate(tiny_config_dict(tmp_path, baseline_steps=40))
    model = load_model(str(ensure_baseline(cfg, progress=False))).eval()
    task = load_task_data(cfg, load_tokenizer(cfg))
    kw = dict(pad_id=task.pad_token_id, num_labels=task.num_labels)
    ref = evaluate_split(model, task.validation, batch_size=16, **kw)
    got = onnx_accuracy(export_onnx(model, tmp_path / "f.onnx"), task.validation, batch_size=16, **kw)
    assert got.n == ref.n and got.accuracy == ref.accuracy
    q = onnx_accuracy(export_onnx(model, tmp_path / "q.onnx", int8=True), task.validation, **kw)
    assert q.n == ref.n and abs(q.accuracy - ref.accuracy) <= 0.05


def test_cli_export_onnx_of_a_saved_model(tiny, tmp_path):
    from autoprune.cli import app
    from autoprune.serialization import save_pruned
    from transformers import BertTokenizerFast

    from conftest import VOCAB

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    saved = save_pruned(_cut(tiny, 2, 32), tmp_path / "saved", tok, quantized=True)
    runner = CliRunner()
    r = runner.invoke(app, ["export-onnx", str(saved), "-o", str(tmp_path / "out" / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "int8" in r.stdout and is_onnx_int8(tmp_path / "out" / "m.onnx")
    r = runner.invoke(app, ["export-onnx", str(saved), "-o", str(tmp_path / "f.onnx"), "--float"])
    assert r.exit_code == 0 and not is_onnx_int8(tmp_path / "f.onnx")
    r = runner.invoke(app, ["export-onnx", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "no config.json" in r.output and "Traceback" not in r.output


# ----------------------------------------------------------------------------- config
def test_targets_take_the_top_level_fields_and_name_the_objective():
    assert MeasureConfig().resolved_targets() == [Target(name="torch-cpu", batch1=True)]
    m = MeasureConfig.model_validate({"threads": 2, "seq_len": 128, "targets": [
        {"runtime": "onnxruntime"}, {"runtime": "onnxruntime", "name": "ort-b1", "batch_size": 1, "threads": 1}],
        "objective": "ort-b1"})
    assert [(t.name, t.threads, t.batch_size, t.seq_len) for t in m.resolved_targets()] == [
        ("onnxruntime-cpu", 2, 32, 128), ("ort-b1", 1, 1, 128)]
    assert m.objective_target().name == "ort-b1"
    raw = {"data": {"files": {"train": "t.tsv", "validation": "v.tsv"}}}
    for bad, msg in (({"targets": [{"runtime": "tensorrt"}]}, "measure.targets.0.runtime"),
                     ({"targets": [{}, {}]}, "two targets named 'torch-cpu'"),
                     ({"objective": "ort"}, "'objective' is 'ort', which is not a target")):
        with pytest.raises(ConfigError, match=msg):
            config_from_dict({**raw, "measure": bad}, "run.yaml")


# ----------------------------------------------------------------------------- checks
def test_missing_runtime_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(TargetError, match="measure target 'onnxruntime-cpu'.*'onnxruntime' package.*not installed"):
        check_targets([Target(runtime="onnxruntime")])
    check_targets([Target()])  # eager PyTorch needs nothing more
    # a search with such a target stops before any study storage exists
    from autoprune.search import run_search, space_from_dict

    cfg = tiny_config_dict(tmp_path)
    cfg["measure"]["targets"] = [{"runtime": "onnxruntime"}]
    space = space_from_dict({"config": cfg, "criteria": ["l1"], "n_trials": 1}, str(tmp_path / "s.yaml"), tmp_path)
    with pytest.raises(TargetError, match="not installed"):
        run_search(space, storage=f"sqlite:///{tmp_path / 'runs' / 's.db'}", progress=False, dense_metrics={})
    assert not (tmp_path / "runs" / "s.db").exists()


@no_gpu
def test_gpus_per_trial_without_a_gpu_is_one_clear_error(tmp_path):
    with pytest.raises(TargetError, match="gpus_per_trial is 0.5 but this machine has no GPU"):
        check_gpus(0.5)
    check_gpus(0)
    with pytest.raises(TargetError, match="device cuda, but no CUDA GPU is visible"):
        check_before_study(MeasureConfig(targets=[Target(device="cuda")]), joining_cluster=False)
    from autoprune.search import run_search, space_from_dict

    space = space_from_dict({"config": tiny_config_dict(tmp_path), "criteria": ["l1"], "n_trials": 1,
                             "gpus_per_trial": 0.5}, str(tmp_path / "s.yaml"), tmp_path)
    with pytest.raises(TargetError, match="no GPU"):
        run_search(space, storage=f"sqlite:///{tmp_path / 'runs' / 's.db'}", progress=False, dense_metrics={})
    assert not (tmp_path / "runs" / "s.db").exists()


# ----------------------------------------------------------------------------- Ray: measurement node
@pytest.fixture(scope="module")
def ray_bench():
    """A local Ray on 127.0.0.1 with one CPU, no GPU and a fake custom resource ``bench``."""
    import ray

    from autoprune.search._dispatch import _loopback_only

    tmp = Path("/tmp") / f"ap_rt_ray_{__import__('os').getpid()}"
    with _loopback_only():
        ray.init(address="local", num_cpus=1, num_gpus=0, resources={"bench": 1}, include_dashboard=False,
                 configure_logging=False, log_to_driver=False, _temp_dir=str(tmp), _node_ip_address="127.0.0.1")
        yield ray
        ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def test_measurement_asks_ray_for_the_configured_resource(ray_bench, tiny):
    m = MeasureConfig.model_validate({"resource": "bench", "targets": [
        {"runtime": "torch", "batch_size": 2, "seq_len": 8, "warmup": 1, "repeats": 3, "batch1": False}]})
    check_cluster(m)
    out = measure_targets(tiny, _cut(tiny, 2, 32), m)
    assert out["placement"]["resources"].get("bench") == pytest.approx(RESOURCE_SHARE), out["placement"]
    assert out["placement"]["node_id"] == ray_bench.get_runtime_context().get_node_id()
    assert set(out["targets"]) == {"torch-cpu"} and out["objective"] == "torch-cpu"
    assert out["targets"]["torch-cpu"]["speedup"] > 0
    assert out["machine"] == machine()  # the node that timed it (here the same host) is on record
    # without a resource the same targets are timed in this process: no Ray placement
    assert measure_targets(tiny, tiny, m.model_copy(update={"resource": None}))["placement"] == {}


def test_cluster_without_the_resource_or_a_gpu_is_an_error_not_a_hang(ray_bench):
    with pytest.raises(TargetError, match="no node of the Ray cluster carries.*custom resources: bench"):
        check_cluster(MeasureConfig(resource="gpu_box"))
    with pytest.raises(TargetError, match="gpus_per_trial is 0.25 but the Ray cluster has no GPU"):
        check_cluster(MeasureConfig(), gpus_per_trial=0.25)
    with pytest.raises(TargetError, match="device cuda but trials get no GPU"):
        check_cluster(MeasureConfig(targets=[Target(device="cuda")]))


def test_search_space_takes_fractional_gpus(tmp_path):
    from autoprune.search import space_from_dict
    from autoprune.runtimes import ray_trial_options

    raw = {"config": tiny_config_dict(tmp_path), "criteria": ["l1"]}
    assert space_from_dict(raw).gpus_per_trial == 0
    space = space_from_dict({**raw, "gpus_per_trial": 0.25})
    assert ray_trial_options(space.cpus_per_trial, space.gpus_per_trial) == {"num_cpus": 1, "num_gpus": 0.25}
    with pytest.raises(ConfigError, match="gpus_per_trial"):
        space_from_dict({**raw, "gpus_per_trial": -1})


def test_trial_records_every_target_and_optimises_the_objective(tmp_path):
    from autoprune.policy import PruningPolicy
    from autoprune.trial import run_trial

    raw = tiny_config_dict(tmp_path)
    raw["measure"].update(targets=[{"runtime": "torch"}, {"runtime": "onnxruntime", "batch1": True}],
                          objective="onnxruntime-cpu")
    cfg = RunConfig.model_validate(raw)
    res = run_trial(cfg, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=4, quantize=True))
    assert res.targets["objective"] == "onnxruntime-cpu" and set(res.targets["targets"]) == {"torch-cpu",
                                                                                          "onnxruntime-cpu"}
    ort = res.targets["targets"]["onnxruntime-cpu"]
    assert ort["int8"] is True and ort["batch_size"] == 4 and "speedup_b1" in ort
    assert (res.speedup, res.speedup_b1, res.latency_ms) == (ort["speedup"], ort["speedup_b1"], ort["pruned_ms"])
    from autoprune.export import _targets_table

    table = "\n".join(_targets_table(res.targets))  # the export README's table of targets
    assert "onnxruntime-cpu (search objective): onnxruntime cpu, 1 thr, 4x16, int8" in table and "torch-cpu:" in table
