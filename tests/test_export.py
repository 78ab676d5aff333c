"""Export, load_pruned, ONNX and apply on a small real study of tiny-BERT trials.

The module builds one sqlite study from real ``run_trial`` runs (tiny model, tiny data): a few
trials keep their model (``save_dir``), one does not (export must rebuild it), one is quantized.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import int8_measure, make_tiny_model, tiny_config_dict
from typer.testing import CliRunner

from autoprune import _study as S
from autoprune.config import config_from_dict
from autoprune.errors import AutopruneError, ModelError, PolicyError, StudyError
from autoprune.export import ExportError, Selector, apply_policy, export_trial, read_export, select_trial
from autoprune.policy import PruningPolicy
from autoprune.serialization import load_pruned

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (name, policy, keep the model?)
POLICIES = [
    ("l1", PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=10), True),
    ("l2", PruningPolicy.uniform("l2", 2, heads=0.25, ffn=0.75, retrain_steps=10), True),
    ("gradient", PruningPolicy.uniform("gradient", 2, heads=0.5, ffn=0.25, retrain_steps=10), False),
    ("random", PruningPolicy.uniform("random", 2, heads=0.75, ffn=0.5, retrain_steps=10), True),
    ("l1q", PruningPolicy.uniform("l1", 2, heads=0.25, ffn=0.25, retrain_steps=10, quantize=True), True),
    ("l2u", PruningPolicy.uniform("l2", 2, weights=0.6, retrain_steps=10), True),
]


def _params(pol: PruningPolicy) -> tuple[dict, dict]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params = {"criterion": pol.criterion, "head_sparsity": (pol.head_sparsity or pol.weight_sparsity)[0],
              "ffn_sparsity": (pol.ffn_sparsity or pol.weight_sparsity)[0], "retrain_steps": pol.retrain.steps,
              "quantize": pol.quantize}
    dists = {"criterion": CategoricalDistribution(["random", "gradient", "l1", "l2"]),
             "head_sparsity": FloatDistribution(0.0, 0.9), "ffn_sparsity": FloatDistribution(0.0, 0.9),
             "retrain_steps": IntDistribution(0, 400), "quantize": CategoricalDistribution([False, True])}
    return params, dists


def add_result_trial(study, pol: PruningPolicy, res, *, values=None) -> int:
    """Record one trial the way the search does (schema of autoprune._study)."""
    params, dists = _params(pol)
    rd = res.to_dict() if hasattr(res, "to_dict") else dict(res)
    values = values or [rd["accuracy"], rd["speedup"]]
    study.add_trial(optuna.trial.create_trial(
        values=values, params=params, distributions=dists,
        user_attrs={S.T_POLICY: pol.to_dict(), S.T_SUMMARY: pol.summary(), S.T_RESULT: rd,
                    S.T_HISTORY: rd.get("history", [])}))
    return study.trials[-1].number


def new_study(storage: str, name: str, cfg_raw: dict, dense_acc: float = 0.9):
    st = optuna.create_study(storage=storage, study_name=name, directions=S.DIRECTIONS)
    st.set_metric_names(S.METRIC_NAMES)
    st.set_user_attr(S.ATTR_CONFIG, cfg_raw)
    st.set_user_attr(S.ATTR_DENSE, {"accuracy": dense_acc})
    st.set_user_attr(S.ATTR_FLOOR, dense_acc - 0.05)
    return st


_SHARED: dict = {}


def real_trials(factory) -> dict:
    """Run the POLICIES once per test session (tiny model and data) and share the results."""
    if "trials" not in _SHARED:
        from autoprune.trial import run_trial

        root = factory.mktemp("real_trials")
        raw = int8_measure(tiny_config_dict(root, baseline_steps=40))  # timed in ONNX Runtime, where int8 runs
        cfg = config_from_dict(raw)
        results = {}
        for key, pol, keep in POLICIES:
            save = str(root / "trial_models" / key) if keep else None
            results[key] = run_trial(cfg, pol, save_dir=save)
        _SHARED["trials"] = {"root": root, "raw": raw, "cfg": cfg, "results": results}
    return _SHARED["trials"]


def build_real_study(factory, name: str = "tiny") -> dict:
    """A fresh sqlite study recording the shared real tiny-BERT trials; returns handles the tests use."""
    shared = real_trials(factory)
    cfg, results = shared["cfg"], shared["results"]
    storage = f"sqlite:///{factory.mktemp(name) / 'study.db'}"
    st = new_study(storage, name, cfg.model_dump(mode="json"), results["l1"].dense_accuracy)
    numbers = {key: add_result_trial(st, pol, results[key]) for key, pol, _ in POLICIES}
    st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={S.T_FAIL: "nan loss"}))
    return {**shared, "study": st, "storage": storage, "name": name, "numbers": numbers}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return build_real_study(tmp_path_factory, "tiny")


def _batch(vocab: int = 30, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------- selection (synthetic front)
@pytest.fixture
def synthetic(tmp_path):
    st = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="syn", directions=S.DIRECTIONS)
    dense = 0.90
    # (accuracy, speedup): 0,1,2,3 are on the front, 4 is dominated
    for acc, sp in [(0.895, 1.2), (0.885, 1.9), (0.87, 2.4), (0.80, 3.5), (0.85, 1.5)]:
        st.add_trial(optuna.trial.create_trial(values=[acc, sp], user_attrs={
            S.T_RESULT: {"accuracy": acc, "speedup": sp, "accuracy_drop": dense - acc, "dense_accuracy": dense}}))
    return st


@pytest.mark.parametrize("sel, expected", [
    (Selector(max_accuracy_drop=1.0), 0),     # only trial 0 (0.5 pts) within one point
    (Selector(max_accuracy_drop=1.5), 1),     # 1.5 pts exactly: inclusive -> the faster trial 1
    (Selector(max_accuracy_drop=5.0), 2),
    (Selector(max_accuracy_drop=10.0), 3),
    (Selector(min_speedup=1.0), 0),           # most accurate at >= 1x
    (Selector(min_speedup=2.0), 2),
    (Selector(min_speedup=3.5), 3),
    (Selector(trial=4), 4),                   # dominated, but asked for explicitly
    (2, 2),
    ({"min_speedup": 1.9}, 1),
])
def test_selectors_pick_the_right_trial(synthetic, sel, expected):
    assert select_trial(synthetic, sel).number == expected


def test_selectors_that_match_nothing_list_the_front(synthetic):
    with pytest.raises(ExportError, match=r"reaches 5x.*trial 0: accuracy 0\.8950 \(drop 0\.50 pts, speedup 1\.20x\)"):
        select_trial(synthetic, Selector(min_speedup=5.0))
    with pytest.raises(ExportError, match="within 0.1 accuracy points.*the front offers"):
        select_trial(synthetic, Selector(max_accuracy_drop=0.1))
    with pytest.raises(ExportError, match="no trial 99"):
        select_trial(synthetic, Selector(trial=99))
    with pytest.raises(ExportError, match="exactly one"):
        Selector.parse(trial=1, min_speedup=2.0)
    with pytest.raises(ExportError, match="exactly one"):
        Selector.parse()
    with pytest.raises(ExportError, match="percentage points"):
        Selector.parse(max_accuracy_drop=250)
    synthetic.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    with pytest.raises(ExportError, match="FAIL, not COMPLETE"):
        select_trial(synthetic, Selector(trial=5))


# ----------------------------------------------------------------------------- export + load (real trials)
def test_export_copies_the_trial_model_and_load_pruned_matches(real, tmp_path):
    n = real["numbers"]["l1"]
    out = export_trial(real["study"], Selector(trial=n), tmp_path / "exp")
    names = {p.name for p in out.iterdir()}
    assert {"policy.yaml", "README.md", "config.json", "model.safetensors", "prune_record.json"} <= names
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out))("a great film")["input_ids"]
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in out.iterdir())
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    res = real["results"]["l1"]
    assert doc["trial"] == n and doc["source"]["kind"] == "copied"
    # the policy as a user writes it, and beside it the record of the units its pruning kept
    assert "kept_heads" not in doc["policy"] and doc["record"] == res.prune_record
    assert [len(h) for h in doc["record"]["kept_heads"]] == res.heads_per_layer
    assert [len(n) for n in doc["record"]["kept_neurons"]] == res.ffn_per_layer
    assert doc["metrics"]["accuracy"] == pytest.approx(res.accuracy)
    assert doc["metrics"]["speedup"] == pytest.approx(res.speedup)
    assert re.fullmatch(r"[0-9a-f]{64}", doc["base_model"]["sha256"])
    assert doc["base_model"]["weights_files"] == ["model.safetensors"]
    assert doc["dataset"]["splits"]["validation"] == "validation"
    assert {"torch", "transformers", "autoprune"} <= set(doc["versions"])
    assert PruningPolicy.load(out / "policy.yaml") == PruningPolicy.from_dict(res.policy)  # reads as a policy
    assert "load_pruned" in (out / "README.md").read_text()

    model = load_pruned(out)
    assert not model.training
    from autoprune.models import get_adapter

    assert get_adapter(model).shape(model) == (res.heads_per_layer, res.ffn_per_layer)
    ref = load_pruned(res.model_dir)  # the trial's own saved model
    b = _batch()
    with torch.no_grad():
        assert torch.allclose(model(**b).logits, ref(**b).logits, atol=1e-6)


def test_export_rebuilds_a_trial_without_saved_model(real, tmp_path, caplog):
    n = real["numbers"]["gradient"]
    with caplog.at_level(logging.WARNING, logger="autoprune.export"):
        out = export_trial(real["study"], Selector(trial=n), tmp_path / "rebuilt")
    assert "rebuilding" in caplog.text
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    assert doc["source"]["kind"] == "rebuilt"
    assert "rebuilt" in (out / "README.md").read_text()
    res = real["results"]["gradient"]
    model = load_pruned(out)
    from autoprune.models import get_adapter

    assert get_adapter(model).shape(model) == (res.heads_per_layer, res.ffn_per_layer)
    # the same kept units, the same seed and budget: the rebuilt model scores like the trial
    assert abs(doc["source"]["rebuilt_metrics"]["accuracy"] - res.accuracy) <= 0.005


def test_export_onnx_matches_pytorch(real, tmp_path):
    import numpy as np
    import onnxruntime as ort

    out = export_trial(real["study"], Selector(trial=real["numbers"]["l2"]), tmp_path / "onnx", onnx=True)
    assert (out / "model.onnx").is_file()
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    model = load_pruned(out)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == doc["onnx"]["inputs"]
    for seed, shape in ((3, (1, 5)), (4, (5, 20))):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 30, shape, generator=g)
        feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        feed = {k: v for k, v in feed.items() if k in names}
        got = sess.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0]
        with torch.no_grad():
            ref = model(**feed).logits.numpy()
        assert np.abs(got - ref).max() <= 1e-4


def test_quantized_trial_exports_int8_and_int8_onnx_checked_against_the_trial(real, tmp_path):
    from autoprune.onnx_export import is_int8
    from autoprune.quantize import is_onnx_int8

    n = real["numbers"]["l1q"]
    res = real["results"]["l1q"]
    out = export_trial(real["study"], Selector(trial=n), tmp_path / "q")
    model = load_pruned(out)
    assert is_int8(model)  # ONNX Runtime dynamic int8, called like the torch model
    ref = load_pruned(res.model_dir)  # the trial's saved model, quantized again on load
    b = _batch()
    with torch.no_grad():
        assert torch.allclose(model(**b).logits, ref(**b).logits, atol=1e-6)

    q2 = export_trial(real["study"], Selector(trial=n), tmp_path / "q2", onnx=True)
    assert is_onnx_int8(q2 / "model.onnx")
    onnx_doc = yaml.safe_load((q2 / "policy.yaml").read_text())["onnx"]
    chk = onnx_doc["accuracy_check"]
    assert onnx_doc["int8"] == "onnxruntime dynamic" and chk["split"] == res.eval_split and chk["n"] == res.eval_n
    # the trial scored the same int8 file ONNX Runtime makes of the same float weights
    assert chk["trial_accuracy"] == res.accuracy and chk["accuracy"] == pytest.approx(res.accuracy, abs=1e-9)
    assert chk["within_tolerance"] and "Checked on export: `model.onnx` scores" in (q2 / "README.md").read_text()


def test_unstructured_trial_exports_with_its_zeros(real, tmp_path):
    from autoprune.surgery import encoder_weight_sparsity

    res = real["results"]["l2u"]
    out = export_trial(real["study"], Selector(trial=real["numbers"]["l2u"]), tmp_path / "u", onnx=True)
    model = load_pruned(out)
    assert encoder_weight_sparsity(model) == pytest.approx(res.weight_sparsity, abs=1e-6)
    assert not any("weight_orig" in k for k in model.state_dict())
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    assert doc["policy"]["granularity"] == "unstructured" and "kept_heads" not in doc["policy"]
    assert doc["record"]["kept_heads"] is None and len(doc["record"]["weight_sparsity"]) == 2


def test_export_refuses_a_foreign_non_empty_directory(real, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_trial(real["study"], Selector(trial=real["numbers"]["l1"]), tmp_path / "busy")


def test_load_pruned_errors(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_pruned(tmp_path)
    d = make_tiny_model(tmp_path / "dense")
    with pytest.raises(ModelError, match="not saved by autoprune"):
        load_pruned(d)


# ----------------------------------------------------------------------------- apply
def test_apply_reproduces_accuracy_on_the_same_base_model(real, tmp_path):
    out = export_trial(real["study"], Selector(trial=real["numbers"]["l1"]), tmp_path / "exp")
    rep = apply_policy(out / "policy.yaml", real["cfg"], out_dir=tmp_path / "applied")
    assert rep["kept_indices"] is True
    assert abs(rep["result"]["accuracy"] - rep["stored"]["accuracy"]) <= 0.005
    assert rep["result"]["heads_per_layer"] == real["results"]["l1"].heads_per_layer
    assert (tmp_path / "applied" / "model.safetensors").is_file()


def test_apply_on_another_base_model_rescores_with_a_warning(real, tmp_path, caplog):
    out = export_trial(real["study"], Selector(trial=real["numbers"]["l1"]), tmp_path / "exp")
    raw = dict(real["raw"])
    other = make_tiny_model(tmp_path / "other-base", seed=1)  # same shape, different weights
    raw = {**raw, "model": {"name_or_path": str(other)}, "run_dir": str(tmp_path / "runs")}
    with caplog.at_level(logging.WARNING, logger="autoprune.export"):
        rep = apply_policy(out / "policy.yaml", config_from_dict(raw))
    assert rep["kept_indices"] is False
    assert "weights differ" in caplog.text and "re-scoring" in caplog.text
    assert rep["result"]["heads_per_layer"] == real["results"]["l1"].heads_per_layer


@pytest.mark.parametrize("text, match", [
    ("policy: [1, 2\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("metrics: {accuracy: 0.9}\n", "no 'policy' section"),
    ("policy: 3\n", "'policy' must be a mapping"),
    ("policy: {criterion: l9, head_sparsity: [0.5, 0.5]}\n", "criterion"),
    ("policy: {criterion: l1, head_sparsity: [0.5, 0.5], kept_heads: [[0, 0], [1, 2]]}\n", "duplicate"),
    ("policy: {criterion: l1, head_sparsity: [0.5, 0.5, 0.5]}\n", "3 entries but the model has 2"),
    ("policy: {criterion: l1, head_sparsity: [0.5, 0.5], kept_heads: [[0, 9], [1, 2]]}\n", "indexes unit 9"),
])
def test_apply_rejects_corrupt_or_mismatched_policies(real, tmp_path, text, match):
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    # make the hash match so index checks run on the mismatched-index case
    if "kept_heads" in text:
        from autoprune.export import weights_sha256

        sha, _ = weights_sha256(real["cfg"].model.resolve())
        p.write_text(text + f"base_model: {{sha256: '{sha}'}}\n")
    with pytest.raises(PolicyError, match=match):
        apply_policy(p, real["cfg"])


def test_read_export_accepts_a_plain_policy_file(tmp_path):
    p = tmp_path / "plain.yaml"
    PruningPolicy.uniform("l2", 2, heads=0.5).save(p)
    pol, record, doc = read_export(p)
    assert pol.criterion == "l2" and record is None and doc == {}


def test_an_export_written_before_prune_records_still_applies(real, tmp_path, caplog):
    """policy.yaml files of older exports keep the kept indices under 'policy:'; they become the record."""
    out = export_trial(real["study"], Selector(trial=real["numbers"]["l1"]), tmp_path / "exp")
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    record = doc.pop("record")
    doc["policy"].update(kept_heads=record["kept_heads"], kept_neurons=record["kept_neurons"])
    old = tmp_path / "old" / "policy.yaml"
    old.parent.mkdir()
    old.write_text(yaml.safe_dump(doc))
    with caplog.at_level(logging.INFO, logger="autoprune.export"):
        pol, rec, _ = read_export(old)
    assert "read as the prune record" in caplog.text
    assert rec.kept_heads == record["kept_heads"] and "kept_heads" not in pol.to_dict()
    rep = apply_policy(old, real["cfg"])
    assert rep["kept_indices"] is True and rep["result"]["prune_record"]["kept_heads"] == record["kept_heads"]
    assert abs(rep["result"]["accuracy"] - rep["stored"]["accuracy"]) <= 0.005


# ----------------------------------------------------------------------------- CLI
def test_cli_export_and_errors(real, tmp_path):
    from autoprune.cli import app

    runner = CliRunner()
    base = ["export", "--storage", real["storage"], "--study", real["name"]]
    r = runner.invoke(app, base + ["--trial", str(real["numbers"]["l1"]), "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert "exported trial" in r.output and (tmp_path / "e" / "policy.yaml").is_file()

    for args, needle in [
        (base + ["--trial", "99", "-o", str(tmp_path / "x")], "no trial 99"),
        (base + ["--min-speedup", "50", "-o", str(tmp_path / "x")], "reaches 50x"),
        (base + ["-o", str(tmp_path / "x")], "exactly one"),
        (["export", "--storage", real["storage"], "--study", "nope", "--trial", "0", "-o", str(tmp_path / "x")],
         real["name"]),
        (["export", "--storage", f"sqlite:///{tmp_path / 'missing.db'}", "--trial", "0", "-o", str(tmp_path / "x")],
         "does not exist"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output, r.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [oops\n")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(real["raw"]))
    r = runner.invoke(app, ["apply", str(bad), "-c", str(cfg_file)])
    assert r.exit_code == 2 and "malformed YAML" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["apply", str(tmp_path / "e" / "policy.yaml"), "-c", str(cfg_file), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["kept_indices"] is True and abs(rep["result"]["accuracy"] - rep["stored"]["accuracy"]) <= 0.005


def test_errors_are_autoprune_errors():
    assert issubclass(ExportError, AutopruneError) and issubclass(StudyError, AutopruneError)


def test_a_result_stored_before_prune_records_gives_its_kept_indices():
    from autoprune.export import _trial_record
    from autoprune.policy import PruningPolicy

    pol = PruningPolicy(criterion="l1", head_sparsity=[0.5, 0.0], ffn_sparsity=[0.5, 0.0])
    old = {"kept_heads": [[0, 3], [0, 1, 2, 3]], "kept_neurons": [[1, 2], [0, 1, 2, 3]]}
    rec = _trial_record(old, pol, "trial 3")
    assert rec.kept_heads == old["kept_heads"] and rec.kept_neurons == old["kept_neurons"]
    assert rec.heads_per_layer == [2, 4]
    new = {"prune_record": rec.to_dict(), "kept_heads": [[9]]}  # the record wins over the old fields
    assert _trial_record(new, pol, "trial 3").kept_heads == old["kept_heads"]
    assert _trial_record({}, pol, "trial 3") is None
