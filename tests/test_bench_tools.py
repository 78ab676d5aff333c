"""Helpers of the benchmarks (``benchmarks/``) that decide reported numbers, and the results files they write."""

from __future__ import annotations

import datetime as dt
import doctest
import importlib
import json
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from conftest import REPO

from autoprune import _study as S
from autoprune.errors import AutopruneError

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

optuna.logging.set_verbosity(optuna.logging.WARNING)
BENCHMARKS = ("common", "minilm_sst2", "surgery", "search_overhead", "samplers", "int8", "retraining_free", "runtimes",
              "layer_dropping", "multifidelity", "mf_archives", "rung0_fidelity", "gpu_search", "bad_input",
              "int8_export", "latency_table")


def bench(name: str):
    return importlib.import_module(f"benchmarks.{name}")


def _add(study, acc: float, speedup: float, **attrs) -> None:
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc, speedup],
                                 user_attrs={S.T_RESULT: {"accuracy": acc, "speedup": speedup}, **attrs}))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmarks_import_no_private_module_and_their_examples_run(name):
    src = (REPO / "benchmarks" / f"{name}.py").read_text()
    assert "autoprune._" not in src and "autoprune.search._" not in src
    if name != "bad_input":  # the CLI-level twin of tests/test_bad_input.py builds its workspace with the tests' tiny models
        assert "from conftest" not in src
    res = doctest.testmod(bench(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0


@pytest.mark.parametrize("argv", [["minilm_sst2.py"], ["surgery.py"], ["search_overhead.py"], ["int8.py"],
                                  ["samplers.py", "real"], ["samplers.py", "surrogate"]])
def test_every_benchmark_runs_from_a_checkout_and_offers_a_results_file(argv):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / argv[0]), *argv[1:], "--help"],
                          capture_output=True, text=True, timeout=120, cwd=REPO / "tests")
    assert proc.returncode == 0, proc.stderr
    assert "--results" in proc.stdout


def test_results_file_keeps_other_sections_and_records_the_command(tmp_path, monkeypatch):
    common = bench("common")
    path = tmp_path / "r" / "x.json"
    args = SimpleNamespace(results=path, benchmark="x")
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "x.py"), "--seeds", "1,2"])
    common.write_results(args, "report", {"ratio": 1.5})
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "x.py"), "--phases", "seeds-report"])
    common.write_results(args, "seeds", [{"seed": 1}])
    common.write_results(args, "report", {"ratio": 2.0})  # replaces its own section only
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "x" and sorted(doc["sections"]) == ["report", "seeds"]
    rep = doc["sections"]["report"]
    assert rep["results"] == {"ratio": 2.0}
    assert rep["command"] == ".venv/bin/python benchmarks/x.py --phases seeds-report"
    assert doc["sections"]["seeds"]["results"] == [{"seed": 1}]
    dt.datetime.strptime(rep["date"], "%Y-%m-%d %H:%M")
    assert rep["commit"] is None or len(rep["commit"].split("-")[0]) >= 7


def test_parse_ints_names_the_flag():
    with pytest.raises(AutopruneError, match="--seeds 'a,b'"):
        bench("common").parse_ints("a,b", "--seeds")


def test_study_wall_time_counts_overlapping_trials_once_and_skips_the_gap_between_invocations():
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)
    study = optuna.create_study(directions=S.DIRECTIONS)
    # two workers overlap (0-10, 5-12: 12 min), then the study is resumed an hour later (70-80: 10 min)
    for start, end in ((70, 80), (0, 10), (5, 12), (6, 8)):
        t = create_trial(values=[0.9, 1.5])
        t.datetime_start, t.datetime_complete = t0 + dt.timedelta(minutes=start), t0 + dt.timedelta(minutes=end)
        study.add_trial(t)
    assert bench("minilm_sst2").study_wall(study) == pytest.approx(22 * 60)


def test_study_names_ignore_later_fields_left_at_their_defaults(tiny_config, tmp_path):
    # the reference studies are keyed by a hash of the space and run config: adding `qat` to
    # SearchSpace or `exclude_train_overlap` to DataConfig must not orphan studies run before they
    # existed, but setting either must start fresh studies
    import hashlib

    from autoprune.search import space_from_dict

    mod = bench("minilm_sst2")
    names = mod.study_names
    raw = {"config": tiny_config.model_dump(mode="json"), "quantize": [False, True]}
    plain = space_from_dict(raw, str(tmp_path / "s.yaml"), tmp_path)
    # the key as computed before `qat` existed: the space's fields without it
    before = {"protocol": mod.PROTOCOL,
              "config": plain.run_config().model_dump(mode="json", exclude={"run_dir": True,
                                                                            "data": {"exclude_train_overlap"}}),
              "space": plain.model_dump(mode="json", exclude={"n_trials", "qat"})}
    tag = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:6]
    assert names(plain)["search"].endswith(f"_p{tag}")
    with_qat = space_from_dict({**raw, "qat": True}, str(tmp_path / "s.yaml"), tmp_path)
    assert names(with_qat)["search"] != names(plain)["search"]
    cfg2 = dict(raw["config"], data=dict(raw["config"]["data"], exclude_train_overlap=True))
    leak_checked = space_from_dict({**raw, "config": cfg2}, str(tmp_path / "s.yaml"), tmp_path)
    assert names(leak_checked)["search"] != names(plain)["search"]
    assert names(plain.model_copy(update={"n_trials": 99})) == names(plain)


def test_hypervolume_first_compares_equal_counted_trial_counts():
    # a study that ran further (or re-ran orphans) is cut to its first n trials that count towards n_trials
    study = optuna.create_study(directions=S.DIRECTIONS)
    study.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.95})
    _add(study, 0.92, 2.0)                                                                 # 0: counts
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={S.T_ORPHANED: True}))  # 1: does not count
    _add(study, 0.99, 3.0)                                                                 # 2: the 2nd counted
    study.add_trial(create_trial(state=TrialState.PRUNED))                                  # 3: the 3rd, no point
    _add(study, 0.995, 4.0)                                                                # 4: the 4th
    common = bench("common")
    ref = common.study_reference(study)
    assert ref == pytest.approx((0.90, 1.0))
    assert common.hypervolume_first(study, 1, ref) == pytest.approx(0.02 * 1.0)
    assert common.hypervolume_first(study, 2, ref) == pytest.approx(0.09 * 2.0)
    assert common.hypervolume_first(study, 3, ref) == pytest.approx(0.09 * 2.0)
    assert common.hypervolume_first(study, 4, ref) == pytest.approx(0.095 * 3.0)
    with pytest.raises(AutopruneError, match="no dense accuracy"):
        common.study_reference(optuna.create_study(directions=S.DIRECTIONS, study_name="bare"))


def test_seeds_report_compares_each_seed_at_equal_trial_counts_and_averages_only_finished_seeds(tmp_path):
    # the replication of search vs random at other sampler seeds: a pair is compared at the trial
    # count both arms reached, an unfinished pair is marked interim and left out of the mean
    mod = bench("minilm_sst2")
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    names = {"search": "ref", "random": "ref_random", "uniform": "ref_uniform"}

    def study(name: str, points: list[tuple[float, float]]) -> None:
        st = optuna.create_study(study_name=name, storage=storage, directions=S.DIRECTIONS)
        for acc, sp in points:
            _add(st, acc, sp)
        if name == "ref":
            st.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.95})
            st.set_user_attr(S.ATTR_SPACE, {"seed": 0})

    # reference point (0.90, 1.0): hypervolume of one point (a, s) is (a - 0.90) * (s - 1)
    study("ref", [(0.94, 2.0), (0.92, 3.0)])        # 0.04 + 0.02 * 1 = 0.06
    study("ref_random", [(0.93, 2.0), (0.99, 1.0)])  # 0.03 (the second point adds no area)
    s7 = mod.seed_names(names, 7)
    study(s7["search"], [(0.95, 2.0), (0.95, 5.0)])  # first 1 of 2 trials: 0.05
    study(s7["random"], [(0.92, 2.0)])               # 0.02
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nhand-written\n")
    text, numbers = mod.seeds_report(storage, names, [7], 2, md)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows[0] == "| 0 | 2 | 2 | 2 | 0.06000 | 0.03000 | 2.00x | 2.00x (1 seed) |"
    assert rows[1] == "| 7 | 2 | 1 | 1 | 0.05000 | 0.02000 | 2.50x (interim) | - |"
    assert "over the 1 seed(s)" in text and "**2.00x**" in text
    assert [s["finished"] for s in numbers["seeds"]] == [True, False]
    assert numbers["seeds"][1]["hypervolume_search"] == pytest.approx(0.05)
    # a second finished seed: the running column is the ratio of the mean hypervolumes so far
    s8 = mod.seed_names(names, 8)
    study(s8["search"], [(0.92, 2.0), (0.91, 2.0)])  # 0.02
    study(s8["random"], [(0.93, 2.0), (0.93, 2.0)])  # 0.03
    text, numbers = mod.seeds_report(storage, names, [7, 8], 2, md)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows[2] == "| 8 | 2 | 2 | 2 | 0.02000 | 0.03000 | 0.67x | 1.33x (2 seeds) |"
    assert "over the 2 seed(s)" in text and "**1.33x**" in text
    assert numbers["mean_search"] / numbers["mean_random"] == pytest.approx(0.04 / 0.03)
    # written between its markers, and replaced (not appended) the next time
    mod.seeds_report(storage, names, [7], 2, md)
    out = md.read_text()
    assert out.startswith("# Benchmarks\n\nhand-written\n") and out.count(mod.SEEDS_BEGIN) == 1
    with pytest.raises(AutopruneError, match="reference run's own seed"):
        mod.replicate(SimpleNamespace(seed=0), storage, names, [0, 7], 2)


def _policy(granularity: str, sparsity: float, *, quantize: bool = False) -> dict:
    layers = [sparsity] * 6
    sp = ({"head_sparsity": layers, "ffn_sparsity": layers} if granularity == "structured"
          else {"weight_sparsity": layers})
    return {"criterion": "l1", "granularity": granularity, **sp, "iterative_steps": 1, "quantize": quantize,
            "qat": False, "retrain": {"steps": 300, "learning_rate": 5e-5, "warmup_ratio": 0.1, "batch_size": 32}}


def test_sampler_surrogate_matches_within_the_speed_deciding_group_and_predicts_stops():
    mod = bench("samplers")
    rows = [(_policy("structured", 0.2), {"accuracy": 0.95, "speedup": 1.3}),
            (_policy("structured", 0.3), {"accuracy": 0.94, "speedup": 1.5}),
            (_policy("structured", 0.8), None), (_policy("structured", 0.85), None),
            (_policy("structured", 0.2, quantize=True), {"accuracy": 0.93, "speedup": 2.4})]
    model = mod.Surrogate(rows, k=2)
    acc, speed = model(_policy("structured", 0.2))       # an observed policy: its own result dominates
    assert acc == pytest.approx(0.95, abs=2e-3) and speed == pytest.approx(1.3, abs=0.01)
    assert model(_policy("structured", 0.82)) is None    # both nearest neighbours were stopped
    # int8 decides the speed: an int8 policy is matched only to int8 trials, however close a float one is
    assert model(_policy("structured", 0.25, quantize=True)) == pytest.approx((0.93, 2.4))
    # a group never observed falls back to the same granularity and int8 setting, then to the granularity
    assert model({**_policy("structured", 0.2, quantize=True), "qat": True}) == pytest.approx((0.93, 2.4))
    with pytest.raises(ValueError, match="no observed trial of granularity unstructured"):
        model(_policy("unstructured", 0.5))


def test_surrogate_reads_counted_completed_and_stopped_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    st = optuna.create_study(study_name="ref_seed7", storage=storage, directions=S.DIRECTIONS)
    pol = _policy("structured", 0.2)
    _add(st, 0.9, 1.5, **{S.T_POLICY: pol})
    st.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={S.T_POLICY: pol}))
    st.add_trial(create_trial(state=TrialState.FAIL, user_attrs={S.T_POLICY: pol, S.T_DUPLICATE: True}))
    _add(st, 0.8, 2.0)  # no policy recorded: not an observation
    mod = bench("samplers")
    rows = mod.observed(storage, ["ref_seed7"])["ref_seed7"]
    assert rows == [(pol, {"accuracy": 0.9, "speedup": 1.5}), (pol, None)]
    assert mod.seed_of("ref_seed7") == "7" and mod.seed_of("ref") == "0"


def test_real_sampler_bench_rotates_order_and_compares_on_common_seeds():
    mod = bench("samplers")
    order = bench("common").rotated_plan([7, 8, 9], ["random", "tpe", "gp"])
    # every sampler runs once per seed, and each takes each place in the order once over three seeds
    assert sorted(order) == sorted((s, x) for s in (7, 8, 9) for x in ("random", "tpe", "gp"))
    assert [o[1] for o in order[0::3]] == ["random", "tpe", "gp"]
    # seed 3 is missing for gp (an interrupted run): the summary compares every sampler on seeds 1-2 only
    rows = mod.summarise({"random": {1: 0.10, 2: 0.20, 3: 0.90}, "gp": {1: 0.15, 2: 0.30}})
    gp = next(r for r in rows if r.startswith("| gp |"))
    rnd = next(r for r in rows if r.startswith("| random |"))
    assert "| 2 | 0.22500 |" in gp and "1.50x" in gp and "2/2" in gp
    assert "| 2 | 0.15000 |" in rnd and "1.00x" in rnd


def test_archive_copies_the_protocol_studies_and_replaces_older_copies(tmp_path):
    mod = bench("minilm_sst2")
    src = f"sqlite:///{tmp_path / 'runs.db'}"
    out = tmp_path / "docs" / "studies.db"
    ref = optuna.create_study(study_name="mini_p1", storage=src, directions=["maximize", "maximize"])
    ref.set_user_attr("dense", {"accuracy": 0.9})
    ref.tell(ref.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), [0.8, 1.5])
    optuna.create_study(study_name="mini_p1_random_seed7", storage=src, directions=["maximize", "maximize"])
    optuna.create_study(study_name="other", storage=src)
    assert mod.archive(src, "mini_p1", out) == ["mini_p1", "mini_p1_random_seed7"]
    ref.tell(ref.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), [0.85, 2.0])
    mod.archive(src, "mini_p1", out)  # again, after one more trial: the copy is replaced, not doubled
    dest = f"sqlite:///{out}"
    assert sorted(optuna.get_all_study_names(dest)) == ["mini_p1", "mini_p1_random_seed7"]
    copy = optuna.load_study(study_name="mini_p1", storage=dest)
    assert [t.values for t in copy.trials] == [[0.8, 1.5], [0.85, 2.0]]
    assert copy.user_attrs["dense"] == {"accuracy": 0.9}
    with pytest.raises(AutopruneError, match="no studies named nope"):
        mod.archive(src, "nope", out)


def test_uniform_sweep_is_recorded_in_the_search_schema(tmp_path):
    # the hand-made sweep's trials must read like a search's: the report compares them by the same helpers
    from autoprune.policy import PruningPolicy
    from autoprune.study import create_study, front, record_result, trial_records
    from autoprune.testing import fake_result

    st = create_study("sweep", f"sqlite:///{tmp_path / 'u.db'}")
    for s, acc, sp in ((0.25, 0.9, 1.2), (0.5, 0.85, 1.8), (0.75, 0.7, 1.5)):
        pol = PruningPolicy.uniform("l1", 2, heads=s, ffn=s)
        record_result(st, pol, fake_result(pol, acc, sp), wall_seconds=60.0)
    assert [r.number for r in front(st)] == [0, 1]
    assert bench("minilm_sst2").study_wall(st) == pytest.approx(180.0)
    assert all(r.policy["criterion"] == "l1" and r.summary for r in trial_records(st))


def test_mf_archives_reads_the_committed_protocol_studies(tmp_path):
    archives = sorted((REPO / "docs" / "data").glob("multifidelity*_studies.db"))
    if len(archives) < 3:
        pytest.skip("the archived protocol studies (docs/data/multifidelity*_studies.db) are not in this checkout")
    out = tmp_path / "a.json"
    bench("mf_archives").main([*map(str, archives), "--results", str(out)])
    res = json.loads(out.read_text())["sections"]["archives"]["results"]
    refit = res["refit"]
    assert refit["n"] == len(refit["pairs"]) >= 10
    assert refit["mean"] == pytest.approx(sum(p["difference"] for p in refit["pairs"]) / refit["n"])
    seeds = res["also_final"]["seeds"]
    assert len(seeds) >= 5
    for x in seeds:  # the cuts only add points to a front: its hypervolume cannot fall
        assert x["with_cuts"] >= x["hypervolume"] - 1e-12 and x["ratio"] == pytest.approx(x["hypervolume"] / x["random"])
    corr = res["correlation"]
    assert corr["n_distinct"] >= 17 and sum(g["n"] for g in corr["by_granularity"].values()) == corr["n_distinct"]


def test_rung0_fidelity_rescores_the_archived_random_policies_at_a_variants_rung_and_resumes(tmp_path):
    rf = bench("rung0_fidelity")
    if not all(p.is_file() for p in rf.ARCHIVES):
        pytest.skip("the archived protocol studies (docs/data/multifidelity*_studies.db) are not in this checkout")
    policies = rf.archived_policies(list(rf.ARCHIVES))  # the script's default: oldest first
    assert len(policies) >= 42 and len({p["summary"] for p in policies}) == len(policies)  # one per distinct policy
    seen = []

    def fake(config, policy):  # accuracies in call order
        seen.append(policy)
        return {"accuracy": 0.5 + 0.01 * len(seen), "speedup": 2.0, "phase_seconds": {"load": 5.0, "total": 7.0}}

    from scipy.stats import spearmanr

    from autoprune.policy import PruningPolicy

    storage, out = f"sqlite:///{tmp_path / 'rf.db'}", tmp_path / "rf.json"
    argv = ["--variant", "lsq", "{retrain_steps: 0, reconstruct: least_squares}", "--storage", storage, "--limit", "6",
            "--results", str(out), "--config", str(REPO / "search_spaces" / "minilm_sst2_finetuned.yaml")]
    rf.main(argv, trial_fn=fake)
    for got, want in zip(seen, policies[:6]):  # each archived policy as the rung runs it (unstructured re-fitted too)
        want = PruningPolicy.from_dict(want["policy"])
        assert got == want.model_copy(update={"retrain": want.retrain.model_copy(update={"steps": 0}),
                                              "iterative_steps": 1, "reconstruct": "least_squares"})
    rf.main(argv, trial_fn=fake)  # resumed: every policy is stored already
    assert len(seen) == 6
    res = json.loads(out.read_text())["sections"]["variants"]["results"]["lsq"]
    assert res["n"] == 6 and res["seconds_median"] == pytest.approx(2.0)  # the one-off load left out
    assert [x["full_accuracy"] for x in res["pairs"]] == [p["full_accuracy"] for p in policies[:6]]
    assert res["spearman"] == pytest.approx(spearmanr([0.51 + 0.01 * i for i in range(6)],
                                                      [p["full_accuracy"] for p in policies[:6]])[0])
    assert res["rung"] == {"retrain_steps": 0, "reconstruct": "least_squares"}
    # a second variant, and the composed form: structured policies as the first ran them, unstructured as the second
    rf.main(["--variant", "plain", "{retrain_steps: 0}", *argv[3:]], trial_fn=fake)
    assert {p.reconstruct for p in seen[6:]} == {"none"}
    res = json.loads(out.read_text())["sections"]["variants"]["results"]
    lsq = {x["policy"]: x["rung0_accuracy"] for x in res["lsq"]["pairs"]}
    plain = {x["policy"]: x["rung0_accuracy"] for x in res["plain"]["pairs"]}
    mixed = {x["policy"]: x["rung0_accuracy"] for x in res["refit_structured_only"]["pairs"]}
    assert mixed == {k: (lsq[k] if " heads[" in k else plain[k]) for k in lsq} and len(mixed) == 6


def test_latency_table_bench_holds_predictions_against_top_rung_timings_of_its_target(tmp_path):
    lt = bench("latency_table")
    url = f"sqlite:///{tmp_path / 'a.db'}"
    target = {"runtime": "onnxruntime", "device": "cpu", "threads": 1, "batch_size": 32, "seq_len": 64}

    def add(study, speedup, quantize, **over):
        timed = {**target, **over, "speedup": speedup, "speedup_q1": speedup, "speedup_q3": speedup}
        res = {"policy": {"quantize": quantize}, "heads_per_layer": [6, 12], "ffn_per_layer": [512, 1536],
               "targets": {"objective": "ort", "targets": {"ort": timed}}}
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.9, speedup], user_attrs={S.T_RESULT: res}))

    for name in ("mf_seed1", "random_seed1", "mf_seed1.rung0", "correlation"):
        st = optuna.create_study(storage=url, study_name=name, directions=S.DIRECTIONS)
        add(st, 2.0, name == "random_seed1")
        add(st, 3.0, False, batch_size=8)  # another target: left out
    rows = lt.measured_trials([tmp_path / "a.db"], target)
    assert {r["cpu"] for r in rows} == {None}  # stored without the machine: taken as given
    assert [(r["source"][1], r["promoted"], r["int8"], r["measured"]) for r in rows] == [
        ("mf_seed1", True, False, 2.0), ("random_seed1", False, True, 2.0)]  # top rungs of the arms only
    for r, predicted in zip(rows, (2.2, 1.9)):
        r["predicted"] = predicted
    by = lt.grouped(rows)
    assert by["promoted"]["all"] == {"n": 1, "median": 0.1, "worst": 0.1, "median_signed": 0.1}
    assert by["all"]["int8"]["median_signed"] == -0.05 and by["all"]["all"]["worst"] == 0.1
    with pytest.raises(AutopruneError, match="no such study file"):
        lt.measured_trials([tmp_path / "missing.db"], target)
