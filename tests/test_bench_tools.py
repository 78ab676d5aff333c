"""Helpers of the benchmark scripts that decide reported numbers."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hypervolume_of_a_two_objective_front():
    hv = _load("bench_minilm_sst2").hypervolume
    ref = (0.85, 1.0)
    assert hv([(0.9, 2.0)], ref) == pytest.approx(0.05)
    # a dominated point adds nothing; a point below the reference adds nothing
    assert hv([(0.9, 2.0), (0.88, 1.5), (0.80, 3.0)], ref) == pytest.approx(0.05)
    # staircase: (0.95, 1.5) adds the strip between 0.9 and 0.95 up to 1.5x
    assert hv([(0.9, 2.0), (0.95, 1.5)], ref) == pytest.approx(0.05 + 0.5 * 0.05)
    assert hv([], ref) == 0


def test_study_wall_time_counts_overlapping_trials_once_and_skips_the_gap_between_invocations():
    import datetime as dt
    from types import SimpleNamespace

    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)

    def trial(start_min: float, end_min: float) -> SimpleNamespace:
        return SimpleNamespace(datetime_start=t0 + dt.timedelta(minutes=start_min),
                               datetime_complete=t0 + dt.timedelta(minutes=end_min), user_attrs={})

    # two workers overlap (0-10, 5-12: 12 min), then the study is resumed an hour later (70-80: 10 min)
    study = SimpleNamespace(get_trials=lambda deepcopy=False: [trial(70, 80), trial(0, 10), trial(5, 12),
                                                               trial(6, 8)])
    assert _load("bench_minilm_sst2")._study_wall(study) == pytest.approx(22 * 60)


def test_study_names_ignore_later_fields_left_at_their_defaults(tiny_config, tmp_path):
    # the reference studies are keyed by a hash of the space and run config: adding `qat` to
    # SearchSpace or `exclude_train_overlap` to DataConfig must not orphan studies run before they
    # existed, but setting either must start fresh studies
    from autoprune.search import space_from_dict

    import hashlib
    import json

    bench = _load("bench_minilm_sst2")
    names = bench.study_names
    raw = {"config": tiny_config.model_dump(mode="json"), "quantize": [False, True]}
    plain = space_from_dict(raw, str(tmp_path / "s.yaml"), tmp_path)
    # the key as computed before `qat` existed: the space's fields without it
    before = {"protocol": bench.PROTOCOL,
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


def test_search_and_random_are_compared_over_their_first_n_counted_trials():
    # a study that ran further (or re-ran orphans) is cut to its first n trials that count towards
    # n_trials, so the hypervolume ratio compares equal trial counts
    import optuna
    from optuna.trial import TrialState, create_trial

    from autoprune import _study as S

    study = optuna.create_study(directions=S.DIRECTIONS)

    def add(state: TrialState, acc: float | None = None, **attrs: bool) -> None:
        values = [acc, 1.5] if state == TrialState.COMPLETE else None
        res = {S.T_RESULT: {"accuracy": acc, "speedup": 1.5}} if acc is not None else {}
        study.add_trial(create_trial(state=state, values=values, user_attrs={**res, **attrs}))

    add(TrialState.COMPLETE, 0.90)                  # 0: counts
    add(TrialState.FAIL, **{S.T_ORPHANED: True})    # 1: an orphan, re-run later: does not count
    add(TrialState.PRUNED)                          # 2: counts, no result
    add(TrialState.FAIL)                            # 3: a failed trial counts
    add(TrialState.COMPLETE, 0.91)                  # 4: counts
    add(TrialState.COMPLETE, 0.95)                  # 5: beyond the first four
    first = _load("bench_minilm_sst2").completed_in_first
    assert [r["number"] for r in first(study, 4)] == [0, 4]
    assert [r["number"] for r in first(study, 2)] == [0]
    assert [r["number"] for r in first(study, 10)] == [0, 4, 5]


def test_spearman_rank_correlation_with_ties():
    mod = _load("bench_validation_rows")
    assert mod.ranks([0.5, 0.9, 0.5, 0.1]) == [2.5, 4.0, 2.5, 1.0]
    assert mod.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mod.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap among four: 1 - 6 * 2 / (4 * 15) = 0.8
    assert mod.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_seeds_report_compares_each_seed_at_equal_trial_counts_and_averages_only_finished_seeds(tmp_path):
    # the replication of search vs random at other sampler seeds: a pair is compared at the trial
    # count both arms reached, an unfinished pair is marked interim and left out of the mean
    import optuna
    from optuna.trial import TrialState, create_trial

    from autoprune import _study as S

    bench = _load("bench_minilm_sst2")
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    names = {"search": "ref", "random": "ref_random", "uniform": "ref_uniform"}

    def study(name: str, points: list[tuple[float, float]]) -> None:
        st = optuna.create_study(study_name=name, storage=storage, directions=S.DIRECTIONS)
        for acc, sp in points:
            st.add_trial(create_trial(state=TrialState.COMPLETE, values=[acc, sp],
                                      user_attrs={S.T_RESULT: {"accuracy": acc, "speedup": sp}}))
        if name == "ref":
            st.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.95})
            st.set_user_attr(S.ATTR_SPACE, {"seed": 0})

    # reference point (0.90, 1.0): hypervolume of one point (a, s) is (a - 0.90) * (s - 1)
    study("ref", [(0.94, 2.0), (0.92, 3.0)])        # 0.04 + 0.02 * 1 = 0.06
    study("ref_random", [(0.93, 2.0), (0.99, 1.0)])  # 0.03 (the second point adds no area)
    s7 = bench.seed_names(names, 7)
    study(s7["search"], [(0.95, 2.0), (0.95, 5.0)])  # first 1 of 2 trials: 0.05
    study(s7["random"], [(0.92, 2.0)])               # 0.02
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nhand-written\n")
    text = bench.seeds_report(storage, names, [7], 2, md)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows[0] == "| 0 | 2 | 2 | 2 | 0.06000 | 0.03000 | 2.00x | 2.00x (1 seed) |"
    assert rows[1] == "| 7 | 2 | 1 | 1 | 0.05000 | 0.02000 | 2.50x (interim) | - |"
    assert "over the 1 seed(s)" in text and "**2.00x**" in text
    # a second finished seed: the running column is the ratio of the mean hypervolumes so far
    s8 = bench.seed_names(names, 8)
    study(s8["search"], [(0.92, 2.0), (0.91, 2.0)])  # 0.02
    study(s8["random"], [(0.93, 2.0), (0.93, 2.0)])  # 0.03
    text = bench.seeds_report(storage, names, [7, 8], 2, md)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows[2] == "| 8 | 2 | 2 | 2 | 0.02000 | 0.03000 | 0.67x | 1.33x (2 seeds) |"
    assert "over the 2 seed(s)" in text and "**1.33x**" in text
    # written between its markers, and replaced (not appended) the next time
    bench.seeds_report(storage, names, [7], 2, md)
    out = md.read_text()
    assert out.startswith("# Benchmarks\n\nhand-written\n") and out.count(bench.SEEDS_BEGIN) == 1
    with pytest.raises(bench.AutopruneError, match="reference run's own seed"):
        bench.replicate(SimpleNamespace(seed=0), storage, names, [0, 7], 2)


def _policy(granularity: str, sparsity: float, *, quantize: bool = False) -> dict:
    layers = [sparsity] * 6
    sp = ({"head_sparsity": layers, "ffn_sparsity": layers} if granularity == "structured"
          else {"weight_sparsity": layers})
    return {"criterion": "l1", "granularity": granularity, **sp, "iterative_steps": 1, "quantize": quantize,
            "qat": False, "retrain": {"steps": 300, "learning_rate": 5e-5, "warmup_ratio": 0.1, "batch_size": 32}}


def test_sampler_surrogate_matches_within_the_speed_deciding_group_and_predicts_stops():
    mod = _load("bench_sampler_surrogate")
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


def test_real_sampler_bench_rotates_order_and_compares_on_common_seeds():
    mod = _load("bench_samplers_real")
    order = mod.plan([7, 8, 9], ["random", "tpe", "gp"])
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
    import optuna

    mod = _load("bench_minilm_sst2")
    src = f"sqlite:///{tmp_path / 'runs.db'}"
    out = tmp_path / "docs" / "studies.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ref = optuna.create_study(study_name="mini_p1", storage=src, directions=["maximize", "maximize"])
    ref.set_user_attr("dense", {"accuracy": 0.9})
    ref.tell(ref.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), [0.8, 1.5])
    optuna.create_study(study_name="mini_p1_random_seed7", storage=src, directions=["maximize", "maximize"])
    optuna.create_study(study_name="other", storage=src)
    assert mod.archive(src, "mini_p1", out) == ["mini_p1", "mini_p1_random_seed7"]
    ref.tell(ref.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), [0.85, 2.0])
    mod.archive(src, "mini_p1", out)  # again, after one more trial: the copy is replaced, not doubled
    dest = f"sqlite:///{out}"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(dest)) == ["mini_p1", "mini_p1_random_seed7"]
    copy = optuna.load_study(study_name="mini_p1", storage=dest)
    assert [t.values for t in copy.trials] == [[0.8, 1.5], [0.85, 2.0]]
    assert copy.user_attrs["dense"] == {"accuracy": 0.9}
    with pytest.raises(mod.AutopruneError, match="no studies named nope"):
        mod.archive(src, "nope", out)
