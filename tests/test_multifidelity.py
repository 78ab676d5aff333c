"""Multi-fidelity search: the promotion rule on hand-made rungs, rungs in the space, the driver's rungs
(promotions, honest fronts and exports, a driver killed between rungs, the wall-time budget), status,
the dashboard's rungs and the benchmark's scoring. Trials are the fakes of ``autoprune.search._fake`` in
this process (InProcessExecutor); one end-to-end test on a real Ray is marked slow.
"""

from __future__ import annotations

import functools
import json
import math
import sys

import pytest

from conftest import REPO, tiny_config_dict

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState, create_trial  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from autoprune import _study as S  # noqa: E402
from autoprune.cli import app  # noqa: E402
from autoprune.errors import ConfigError, StudyError  # noqa: E402
from autoprune.search import (InProcessExecutor, load_search_space, open_study, resume, run_search,  # noqa: E402
                              space_from_dict)
from autoprune.search import _promotion as P  # noqa: E402
from autoprune.search._driver import counted  # noqa: E402
from autoprune.search._fake import fake_trial  # noqa: E402
from autoprune.search._rungs import finished_candidates, policy_key  # noqa: E402
from autoprune.study import front, hypervolume, rungs, trial_records  # noqa: E402

DENSE = {"accuracy": 0.9, "macro_f1": 0.89}
RUNGS = [{"retrain_steps": 0, "reconstruct": "least_squares"}, {"retrain_steps": 20}, {"retrain_steps": "full"}]
FAKE = functools.partial(fake_trial, sleep=0.0, step_gain=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_config_dict(tmp_path_factory.mktemp("tiny"))


def make_space(tiny, tmp_path, **over):
    raw = {"config": dict(tiny, run_dir=str(tmp_path / "runs")), "criteria": ["l1", "l2"], "n_trials": 12,
           "trials_in_flight": 2, "sampler": "random", "retrain": {"steps": [100, 200]},
           "structured": {"heads": {"base": [0.0, 0.5]}, "ffn": {"mode": "free"}}, "rungs": RUNGS}
    raw.update(over)
    return space_from_dict(raw, str(tmp_path / "space.yaml"), tmp_path)


def search(space, executor=None, **kw):
    kw.setdefault("study_name", "s")
    kw.setdefault("trial_fn", FAKE)
    return run_search(space, dense_metrics=DENSE, progress=False, executor=executor or InProcessExecutor(), **kw)


def url_of(tmp_path, name="s"):
    return f"sqlite:///{tmp_path / 'runs' / (name + '.db')}"


def cand(number, values, key=None):
    return P.Candidate(number=number, key=key or f"p{number}", values=values)


# ----------------------------------------------------------------------------- the promotion rule
def test_promotion_picks_the_non_dominated_policies_of_a_rung():
    # a front of three, (0.9, 1.2) (0.85, 1.6) (0.8, 2.0), and six policies behind it; two stopped early
    front3 = [cand(0, (0.9, 1.2)), cand(4, (0.85, 1.6)), cand(7, (0.8, 2.0))]
    behind = [cand(1, (0.88, 1.1)), cand(2, (0.84, 1.5)), cand(3, (0.7, 1.9)), cand(5, (0.6, 1.0)),
              cand(6, (0.79, 1.95)), cand(8, (0.5, 1.0))]
    stopped = [cand(9, None), cand(10, None)]
    pool = front3 + behind + stopped  # 11 finished: the top third holds floor(11/3) = 3
    assert sorted(c.number for c in P.select(pool, 1 / 3, closed=False)) == [0, 4, 7]
    # once the rung can no longer grow, ceil(11/3) = 4: the best of the second front joins
    picked = P.select(pool, 1 / 3, closed=True)
    assert sorted(c.number for c in picked[:3]) == [0, 4, 7] and picked[3].number in (1, 2, 3, 6)
    # a stopped or failed policy is never promoted, even when the quota exceeds the complete ones
    assert {c.number for c in P.select(pool, 1.0, closed=True)} == set(range(9))
    # nothing twice: a policy at the next rung already is skipped, and one key is promoted once
    assert [c.number for c in P.select(pool, 1 / 3, promoted={"p0", "p7"}, closed=False)] == [4]
    twins = [cand(0, (0.9, 1.2), key="same"), cand(1, (0.9, 1.2), key="same"), cand(2, (0.5, 1.0))]
    assert [c.number for c in P.select(twins, 1.0, closed=True)] == [0, 2]


def test_crowding_spreads_promotions_along_the_front():
    # five non-dominated policies: three crowd the accurate end; with two places besides the ends,
    # the isolated middle one goes before the crowded ones
    pts = [cand(0, (0.900, 1.00)), cand(1, (0.899, 1.01)), cand(2, (0.898, 1.02)), cand(3, (0.85, 1.5)),
           cand(4, (0.80, 2.0))]
    assert P.non_dominated_ranks([c.values for c in pts]) == [0] * 5
    top3 = P.select(pts + [cand(5, None), cand(6, None), cand(8, None), cand(9, None)], 1 / 3, closed=False)
    assert sorted(c.number for c in top3) == [0, 3, 4]


def test_quota_grows_asynchronously_and_rounds_up_when_closed():
    assert [P.quota(n, 1 / 3, closed=False) for n in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [P.quota(n, 1 / 3, closed=True) for n in range(8)] == [0, 1, 1, 1, 2, 2, 2, 3]
    assert P.quota(5, 1.0, closed=False) == 5


# ----------------------------------------------------------------------------- rungs in the space
def test_promotion_ranks_policies_far_below_the_floor_last():
    # the fastest policy of the rung is far below the floor: without a floor it is promoted, with one
    # every policy at or above the floor goes first, and the short ones follow by accuracy
    pool = [cand(0, (0.9, 1.2)), cand(1, (0.5, 4.0)), cand(2, (0.85, 1.5)), cand(3, (0.6, 3.0)), cand(4, (0.88, 1.1))]
    assert 1 in {c.number for c in P.select(pool, 0.4, closed=False)}
    assert [c.number for c in P.select(pool, 0.4, closed=False, floor=0.8)] == [0, 2]
    assert [c.number for c in P.select(pool, 1.0, closed=False, floor=0.8)] == [0, 2, 4]  # open: none below
    assert [c.number for c in P.select(pool, 1.0, closed=True, floor=0.8)][3:] == [3, 1]  # closed: they follow
    assert P.select(pool, 0.4, closed=False, floor=0.95) == []
    assert [c.number for c in P.select(pool, 0.4, closed=True, floor=0.95)] == [0, 4]  # none above: by accuracy


def test_the_floor_slack_keeps_hopeless_policies_off_the_top_rung(tiny, tmp_path):
    promoted = {}
    for slack in (None, 0.1):  # the floor is 0.9 - 0.05; l2 policies score 0.3 at every rung
        ex = InProcessExecutor()
        path = tmp_path / str(slack)
        space = make_space(tiny, path, accuracy_drop_floor=0.05, promote_floor_slack=slack, rungs=RUNGS[::2])
        top = search(space, ex, trial_fn=functools.partial(FAKE, low_accuracy_criterion="l2"))
        levels = rungs(top)
        promoted[slack] = [r.policy["criterion"] for r in sorted(levels[-1].records, key=lambda r: r.number)]
        n_l1 = sum(r.policy["criterion"] == "l1" for r in levels[0].finished)
    assert "l2" in promoted[None][:-1]  # fast and inaccurate: on rung 0's front, the rank alone promotes it early
    # with the slack every l1 policy goes up first; l2 ones only fill the closed rung's quota, last
    quota = math.ceil(12 / 3)
    assert 0 < n_l1 and promoted[0.1] == ["l1"] * min(n_l1, quota) + ["l2"] * max(0, quota - n_l1)
    for over in ({"accuracy_drop_floor": None}, {"rungs": None}):  # no floor to be below, no rungs to promote to
        with pytest.raises(ConfigError, match="promote_floor_slack"):
            make_space(tiny, tmp_path, promote_floor_slack=0.1, **over)


@pytest.mark.parametrize("rungs_, needle", [
    ([{"retrain_steps": 0}], "at least two levels"),
    ([{"retrain_steps": 0}, {"retrain_steps": 50}], "last of 'rungs' must be 'retrain_steps: full'"),
    ([{"retrain_steps": "full"}, {"retrain_steps": "full"}], "only the last"),
    ([{"retrain_steps": 50}, {"retrain_steps": 10}, {"retrain_steps": "full"}], "must increase"),
    ([{"retrain_steps": 0}, {"retrain_steps": 200}, {"retrain_steps": "full"}], "not below the largest retraining"),
    ([{"retrain_steps": -1}, {"retrain_steps": "full"}], "must be 0 or more"),
    ([{"retrain_steps": 0}, {"retrain_steps": "full", "also_final": True}], "'also_final' belongs to a rung below"),
    ([{"retrain_steps": 0}, {"retrain_steps": "full", "speed": "table"}], "'speed: table' belongs to a rung below"),
    ([{"retrain_steps": 0, "speed": "guess"}, {"retrain_steps": "full"}], "speed"),
])
def test_bad_rungs_are_one_clear_error(tiny, tmp_path, rungs_, needle):
    with pytest.raises(ConfigError, match="space.yaml") as ei:
        make_space(tiny, tmp_path, rungs=rungs_)
    assert needle in str(ei.value) and "\n" not in str(ei.value).strip()


def test_policies_without_retraining_run_their_budget_at_rung_0_and_again_at_the_top(tiny, tmp_path):
    two = [RUNGS[0], {"retrain_steps": "full", "reconstruct": "least_squares"}]  # as the shipped spaces
    space = make_space(tiny, tmp_path, retrain={"steps": [0, 100]}, rungs=two, n_trials=16, promote_fraction=0.5)
    ex = InProcessExecutor()
    top = search(space, ex)
    levels = rungs(top)
    zero = [r for r in levels[-1].records if r.target_policy["retrain"]["steps"] == 0]
    assert zero and len(zero) < len(levels[-1].records)  # both kinds were promoted
    full_measure = space.run_config().measure.model_dump()
    for r in zero:  # the top rung runs the policy's own (empty) budget, timed in full
        assert r.policy["retrain"]["steps"] == 0 and r.policy.get("reconstruct") == "least_squares"
        job = next(j for j in ex.submitted if j.number == r.number and j.config["measure"] == full_measure)
        assert job.policy == r.policy
        below = next(b for b in levels[0].records if b.number == r.source_trial)
        assert below.policy == r.policy and below.accuracy == r.accuracy  # the same run, timed apart
    assert {r.rung for r in front(top)} == {1}


ALSO_FINAL = [{"retrain_steps": 0, "reconstruct": "least_squares", "also_final": True}, {"retrain_steps": "full"}]


def _finals_invariants(levels, floor):
    """Each policy promoted from rung 0 whose result there meets ``floor`` also ran at the top rung as
    rung 0 ran it, exactly once and before its full-budget promotion; none of the others did."""
    below = {r.number: r for r in levels[0].records}
    top = {r.number: r for r in levels[-1].records if r.label != S.LABEL_ORPHANED}
    finals = {n: r for n, r in top.items() if r.final_of is not None}
    assert levels[0].finals == {r.final_of[1]: n for n, r in finals.items()}
    assert len(finals) == len(levels[0].finals)  # once per source
    eligible = {a for a in levels[0].promoted_to if below[a].complete and below[a].accuracy >= floor}
    assert set(levels[0].finals) == eligible
    for a, b in levels[0].finals.items():
        src, fin = below[a], top[b]
        assert fin.final_of == (0, a) and fin.source_trial is None and fin.rung == len(levels) - 1
        assert fin.policy == src.policy == fin.target_policy  # the cut as rung 0 ran it, unchanged
        assert fin.policy["retrain"]["steps"] == 0 and fin.policy["reconstruct"] == "least_squares"
        assert b < levels[0].promoted_to[a]  # seconds of work queued before the full budget's minutes
    return finals


def test_a_rung_also_final_sends_its_promoted_cuts_to_the_top_as_they_ran(tiny, tmp_path):
    space = make_space(tiny, tmp_path, rungs=ALSO_FINAL, accuracy_drop_floor=0.15, n_trials=16,
                       promote_fraction=0.5)
    ex = InProcessExecutor()
    top = search(space, ex)
    levels = rungs(top)
    floor = 0.9 - 0.15
    finals = _finals_invariants(levels, floor)
    below = {r.number: r for r in levels[0].records}
    assert finals and any(below[a].accuracy < floor for a in levels[0].promoted_to)  # both kinds were promoted
    full_measure = space.run_config().measure.model_dump()
    for n, r in finals.items():  # timed in full like every final result, stopped against the floor like them
        job = next(j for j in ex.submitted if j.number == n and j.config["measure"] == full_measure)
        assert job.policy == r.policy and job.floor == pytest.approx(floor)
    # the fake's rung 0 lacks 0.1 of accuracy that retraining brings back: the cut stands beside its
    # retrained policy at the same speed, below it, so only the retrained one is on the front
    fr = {r.number for r in front(top)}
    assert fr and not fr & set(finals) and {r.rung for r in front(top)} == {1}
    stored = top.user_attrs[S.ATTR_RUNGS]  # also_final is recorded only where it is set
    assert stored == [ALSO_FINAL[0], {"retrain_steps": "full", "reconstruct": None}]
    rows = json.loads(CliRunner().invoke(app, ["status", "--storage", url_of(tmp_path), "--all-rungs",
                                               "--json"]).stdout)
    assert {r["number"]: r["final_as"] for r in rows if r["rung"] == 0 and r["final_as"] is not None} == levels[0].finals
    assert all(r["final_of"] == [0, r_src] for r in rows for r_src, n in levels[0].finals.items()
               if r["rung"] == 1 and r["number"] == n)
    from autoprune.dashboard import build_dashboard

    page = build_dashboard(top, storage=url_of(tmp_path))
    assert "rung 0 (0 steps, least_squares, also final)" in page and f"(+{len(finals)} to the top as run)" in page
    assert "top rung, as run at rung 0" in page


def test_a_cut_that_retraining_makes_worse_reaches_the_front_as_it_ran(tiny, tmp_path):
    # the fake loses 0.1 of accuracy per retraining here (a fine-tuned model retrained at a fresh
    # learning rate): the cuts run as they ran at rung 0 are the front, their retrained policies are not
    worse = functools.partial(fake_trial, sleep=0.0, step_gain=-0.1)
    top = search(make_space(tiny, tmp_path, rungs=ALSO_FINAL, accuracy_drop_floor=0.3, promote_fraction=0.5),
                 trial_fn=worse)
    levels = rungs(top)
    finals = _finals_invariants(levels, 0.9 - 0.3)
    assert {r.number for r in front(top)} <= set(finals) and front(top)


def killed_at_second_promotion(space, monkeypatch):
    """Run the search until its second promotion, which raises KeyboardInterrupt (Ctrl-C) instead of
    being enqueued; returns ``(rung, trial)`` of the policy whose promotion was lost."""
    import autoprune.search._rungs as R

    real, calls = R.enqueue_promotion, {"n": 0}

    def dies_on_second(upper, source, sp):
        calls["n"] += 1
        if calls["n"] == 2:
            calls["lost"] = (upper.index - 1, source.number)
            raise KeyboardInterrupt
        return real(upper, source, sp)

    monkeypatch.setattr(R, "enqueue_promotion", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        search(space)
    monkeypatch.setattr(R, "enqueue_promotion", real)
    return calls["lost"]


def test_a_driver_killed_between_a_cut_and_its_promotion_resumes_both_once(tiny, tmp_path, monkeypatch):
    space = make_space(tiny, tmp_path, rungs=ALSO_FINAL, accuracy_drop_floor=0.3, trials_in_flight=1)
    killed_at_second_promotion(space, monkeypatch)  # its cut was enqueued at the top, the promotion was not
    search(space)
    levels = _promotion_invariants(url_of(tmp_path), space)
    _finals_invariants(levels, 0.9 - 0.3)
    assert len(levels[0].finals) >= 2


def test_shipped_spaces_screen_at_rung_0_and_keep_the_promoted_cuts_as_final():
    for name, speed in (("quickstart.yaml", ""), ("minilm_sst2.yaml", ", speed from table")):
        space = load_search_space(REPO / "search_spaces" / name)
        assert [r.label() for r in space.rungs] == ["0 steps, least_squares, also final" + speed, "full budget"]
        assert space.promote_fraction == 0.25
        policy = _a_policy(space)
        cut, top = space.rung_policy(policy, 0), space.rung_policy(policy, 1)
        assert cut.retrain.steps == 0 and cut.reconstruct == "least_squares"
        assert top.to_dict() == policy.to_dict()  # the top rung runs the policy as sampled, the one export writes


def _a_policy(space):
    from autoprune.policy import PruningPolicy

    steps = space.retrain.steps if isinstance(space.retrain.steps, int) else max(space.retrain.steps)
    return PruningPolicy.uniform("l1", 6, heads=0.5, ffn=0.5, retrain_steps=steps)


# ----------------------------------------------------------------------------- the driver's rungs
def test_rungs_promote_by_the_rule_and_only_the_top_rung_is_on_the_front(tiny, tmp_path):
    space = make_space(tiny, tmp_path, accuracy_drop_floor=0.05)
    ex = InProcessExecutor()
    top = search(space, ex)
    assert optuna.get_all_study_names(url_of(tmp_path)) == ["s", "s.rung0", "s.rung1"]
    levels = rungs(top)
    assert [lvl.study_name for lvl in levels] == ["s.rung0", "s.rung1", "s"]
    assert len(levels[0].finished) == 12  # n_trials counts the policies finished at rung 0
    for k, lvl in enumerate(levels):
        assert {r.rung for r in lvl.records} == {k}
        keys = [policy_key(r.target_policy) for r in lvl.records]
        assert len(keys) == len(set(keys))  # nothing promoted twice
        for r in lvl.records:
            steps = {0: 0, 1: 20}.get(k, r.target_policy["retrain"]["steps"])
            assert r.policy["retrain"]["steps"] == r.budget["retrain_steps"] == steps
            assert r.policy.get("reconstruct", "none") == ("least_squares" if k == 0 else "none")
        if k:  # every promoted trial names its source, which ran the same policy one rung below
            below = {r.number: r for r in levels[k - 1].records}
            for r in lvl.records:
                assert policy_key(below[r.source_trial].target_policy) == policy_key(r.target_policy)
            assert levels[k - 1].promoted_to == {r.source_trial: r.number for r in lvl.records}
        if not lvl.top:  # the rung closed: what the rule selects from its final results is all promoted
            st = open_study(url_of(tmp_path), lvl.study_name)
            final = P.select([c for c, _ in finished_candidates(st)], space.promote_fraction, closed=True)
            assert {c.number for c in final} <= set(lvl.promoted_to) and final
    # the front and the hypervolume read the top study, which holds the top rung only
    fr = front(top)
    assert fr and all(r.rung == 2 for r in fr) and {r.number for r in fr} <= {r.number for r in levels[-1].records}
    assert hypervolume(top, (0.85, 1.0)) == hypervolume(levels[-1].records, (0.85, 1.0))
    # the jobs: only the top rung stops trials early (floor) and would save models
    by_level = {}
    for j in ex.submitted:
        by_level.setdefault(j.policy["retrain"]["steps"] in (100, 200), []).append(j.floor)
    assert set(by_level[False]) == {None} and by_level[True] == [pytest.approx(0.85)] * len(by_level[True])
    # study attributes: the top study lists its rungs, the lower ones point to it
    assert top.user_attrs[S.ATTR_RUNGS][0] == {"retrain_steps": 0, "reconstruct": "least_squares"}
    assert top.user_attrs[S.ATTR_RUNG_STUDIES] == ["s.rung0", "s.rung1"]
    r1 = open_study(url_of(tmp_path), "s.rung1")
    assert r1.user_attrs[S.ATTR_RUNG_OF] == "s" and r1.user_attrs[S.ATTR_RUNG] == 1
    assert r1.user_attrs[S.ATTR_DENSE] == DENSE and r1.metric_names == S.METRIC_NAMES
    # the storage alone names one search: opening it without a name gives the top study
    assert open_study(url_of(tmp_path), None).study_name == "s"


def test_rungs_below_the_top_screen_speed_in_the_objective_target_only(tiny, tmp_path):
    from autoprune.config import MeasureConfig

    targets = [{"name": "ort", "runtime": "onnxruntime"}, {"name": "eager", "runtime": "torch"}]
    config = dict(tiny, run_dir=str(tmp_path / "runs"), measure=dict(tiny["measure"], targets=targets, objective="eager"))
    ex = InProcessExecutor()
    search(make_space(tiny, tmp_path, config=config, n_trials=6), ex)
    seen: dict[bool, set[str]] = {}  # full budget or not: the distinct measure sections the jobs carried
    for j in ex.submitted:
        seen.setdefault(j.policy["retrain"]["steps"] in (100, 200), set()).add(json.dumps(j.config["measure"]))
    assert len(seen[False]) == len(seen[True]) == 1  # rung 0 and rung 1 (20 steps) alike; the top rung alike
    screened, top = (MeasureConfig.model_validate(json.loads(seen[k].pop())) for k in (False, True))
    assert [(t.name, t.repeats, t.warmup, t.batch1) for t in screened.resolved_targets()] == [("eager", 5, 1, False)]
    assert screened.objective == "eager"
    assert [t.name for t in top.resolved_targets()] == ["ort", "eager"] and top.objective == "eager"
    assert top == MeasureConfig.model_validate(config["measure"])  # the top rung times as the config says
    assert {j.config["run_dir"] for j in ex.submitted} == {config["run_dir"]}  # nothing else differs


def test_a_rung_with_speed_table_predicts_speed_and_the_top_rung_still_times_it(tiny, tmp_path):
    from autoprune.config import MeasureConfig

    table_rungs = [dict(RUNGS[0], speed="table"), *RUNGS[1:]]
    ex = InProcessExecutor()
    top = search(make_space(tiny, tmp_path, rungs=table_rungs, n_trials=6), ex)
    flags: dict[str, set[bool]] = {}  # rung 0 (0 steps), rung 1 (20), top (100, 200): latency_table of its jobs
    for j in ex.submitted:
        steps = j.policy["retrain"]["steps"]
        rung = "top" if steps in (100, 200) else str(steps)
        flags.setdefault(rung, set()).add(MeasureConfig.model_validate(j.config["measure"]).latency_table)
    assert flags == {"0": {True}, "20": {False}, "top": {False}}  # only the rung that asks predicts
    assert top.user_attrs[S.ATTR_RUNGS][0] == {"retrain_steps": 0, "reconstruct": "least_squares", "speed": "table"}
    # a rung left at the default is recorded as before, so studies made before 'speed' existed resume
    assert top.user_attrs[S.ATTR_RUNGS][1] == {"retrain_steps": 20, "reconstruct": None}


def test_a_run_config_that_predicts_final_speed_is_refused_before_any_study(tiny, tmp_path):
    config = dict(tiny, run_dir=str(tmp_path / "runs"), measure=dict(tiny["measure"], latency_table=True))
    with pytest.raises(ConfigError, match="final results are always timed"):
        search(make_space(tiny, tmp_path, config=config))
    assert not (tmp_path / "runs" / "s.db").exists() or not optuna.get_all_study_names(url_of(tmp_path))


def test_a_lower_rung_result_never_reaches_the_front_or_an_export(tiny, tmp_path):
    from autoprune.dashboard import build_dashboard
    from autoprune.export import ExportError, Selector, select_trial

    top = search(make_space(tiny, tmp_path))
    rung0 = open_study(url_of(tmp_path), "s.rung0")
    with pytest.raises(ExportError, match="holds rung 0 of the multi-fidelity search 's'.*export from study 's'"):
        select_trial(rung0, Selector(max_accuracy_drop=100.0))
    with pytest.raises(StudyError, match="see the dashboard of study 's'"):
        build_dashboard(rung0)
    res = CliRunner().invoke(app, ["export", "--storage", url_of(tmp_path), "--study", "s.rung0", "--trial", "0",
                                   "-o", str(tmp_path / "ex")])
    assert res.exit_code == 2 and "not final" in res.output and not (tmp_path / "ex").exists()
    assert select_trial(top, Selector(max_accuracy_drop=100.0)).rung == 2
    # one study holding several rungs (results recorded by hand): the best-looking point is rung 0's,
    # and neither the front, nor an export by selector or by number, takes it
    mixed = optuna.create_study(directions=S.DIRECTIONS)
    for values, rung in (([0.95, 3.0], 0), ([0.88, 1.5], 1), ([0.86, 2.0], 1)):
        attrs = {S.T_RUNG: rung, S.T_RESULT: {"accuracy_drop": 0.9 - values[0]}}
        mixed.add_trial(create_trial(values=values, user_attrs=attrs))
    assert [r.number for r in front(mixed)] == [1, 2]
    assert select_trial(mixed, Selector(min_speedup=1.0)).number == 1
    with pytest.raises(ExportError, match="trial 0 ran at rung 0, below the study's top rung"):
        select_trial(mixed, Selector(trial=0))


class KilledAt:
    """A fake trial that raises KeyboardInterrupt (Ctrl-C of the driver) at its ``at``-th call."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, config, policy, **kw):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return FAKE(config, policy, **kw)


def _promotion_invariants(url, space):
    top = open_study(url, "s")
    levels = rungs(top)
    for k, lvl in enumerate(levels):
        live = [r for r in lvl.records if r.label != S.LABEL_ORPHANED]
        keys = [policy_key(r.target_policy) for r in live]
        assert len(keys) == len(set(keys)), f"rung {k}: a policy promoted twice"
        if k:
            assert all(r.source_trial in {x.number for x in levels[k - 1].records} for r in live if r.final_of is None)
            assert all(r.final_of[1] in {x.number for x in levels[r.final_of[0]].records}
                       for r in live if r.final_of is not None)
        if not lvl.top:
            st = open_study(url, lvl.study_name)
            final = P.select([c for c, _ in finished_candidates(st)], space.promote_fraction, closed=True)
            assert {c.number for c in final} <= set(lvl.promoted_to), f"rung {k}: a promotion was lost"
    assert all(r.state not in ("RUNNING", "WAITING") for lvl in levels for r in lvl.records)
    return levels


def test_a_driver_killed_between_rungs_resumes_without_losing_or_repeating_a_promotion(tiny, tmp_path, monkeypatch):
    space = make_space(tiny, tmp_path, trials_in_flight=1)
    # killed right after a result was recorded, before its promotion was enqueued
    lost = killed_at_second_promotion(space, monkeypatch)
    before = rungs(open_study(url_of(tmp_path), "s"))
    assert sum(len(lvl.records) for lvl in before[1:]) == 1  # one promotion made it, the second was lost
    search(space)  # the same command again: the lost promotion is recomputed from storage
    levels = _promotion_invariants(url_of(tmp_path), space)
    assert before[1].records[0].source_trial in levels[0].promoted_to  # the first promotion kept its place
    rung, number = lost
    assert number in levels[rung].promoted_to  # and the lost one was made on resume
    assert counted(open_study(url_of(tmp_path), "s.rung0").get_trials()) == 12


def test_a_driver_killed_during_a_promoted_trial_re_runs_it_at_its_rung(tiny, tmp_path):
    space = make_space(tiny, tmp_path, trials_in_flight=1)
    # rung 0 trials 0..2 run first; the third finished result promotes one policy, which runs next: kill it
    killer = KilledAt(4)
    with pytest.raises(KeyboardInterrupt):
        search(space, trial_fn=killer)
    r1 = open_study(url_of(tmp_path), "s.rung1")
    states = [(t.state, t.user_attrs.get("orphaned"), t.user_attrs.get(S.T_SOURCE)) for t in r1.get_trials()]
    assert [s[:2] for s in states] == [(TrialState.FAIL, True), (TrialState.WAITING, None)]
    assert states[0][2] == states[1][2] is not None  # the re-run keeps its source and rung attributes
    waiting = r1.get_trials()[1]
    assert waiting.user_attrs[S.T_RUNG] == 1 and waiting.user_attrs["retry_of"] == 0
    resume(space, study_name="s", trial_fn=FAKE, dense_metrics=DENSE, progress=False, executor=InProcessExecutor())
    levels = _promotion_invariants(url_of(tmp_path), space)
    orphan, rerun = levels[1].records[0], levels[1].records[1]
    assert rerun.state == "COMPLETE" and levels[0].promoted_to[orphan.source_trial] == rerun.number


def test_a_space_without_rungs_is_unchanged(tiny, tmp_path):
    space = make_space(tiny, tmp_path, rungs=None, n_trials=4, accuracy_drop_floor=0.05)
    ex = InProcessExecutor()
    st = search(space, ex)
    assert optuna.get_all_study_names(url_of(tmp_path)) == ["s"]
    assert not {S.ATTR_RUNGS, S.ATTR_RUNG_STUDIES} & set(st.user_attrs) and rungs(st) == []
    for t in st.get_trials():
        assert not {S.T_RUNG, S.T_BUDGET, S.T_TARGET_POLICY, S.T_SOURCE} & set(t.user_attrs)
    assert [j.floor for j in ex.submitted] == [pytest.approx(0.85)] * 4
    assert {j.policy["retrain"]["steps"] for j in ex.submitted} <= {100, 200}
    with pytest.raises(ConfigError, match="searched without rungs"):
        from autoprune.cli import _status_rows

        _status_rows(st, rung=0)


def test_a_study_is_continued_only_with_the_rungs_it_was_searched_with(tiny, tmp_path):
    space = make_space(tiny, tmp_path, n_trials=3)
    search(space)
    other = make_space(tiny, tmp_path, n_trials=6, rungs=[{"retrain_steps": 0}, {"retrain_steps": "full"}])
    with pytest.raises(ConfigError, match="was searched with rungs .* the space now gives"):
        search(other)
    with pytest.raises(ConfigError, match="the space now has none"):
        search(make_space(tiny, tmp_path, n_trials=6, rungs=None))


def test_the_wall_time_budget_stops_dispatching_and_records_what_ran(tiny, tmp_path, caplog):
    space = make_space(tiny, tmp_path, n_trials=200, trials_in_flight=2)
    st = search(space, trial_fn=functools.partial(fake_trial, sleep=0.2, step_gain=0.1), timeout_s=1.0)
    r0 = open_study(url_of(tmp_path), "s.rung0").get_trials()
    assert 2 <= counted(r0) < 50 and "wall-time budget reached" in caplog.text
    levels = rungs(st)
    assert all(r.state != "RUNNING" for lvl in levels for r in lvl.records)  # what was in flight finished
    with pytest.raises(ConfigError, match="timeout must be a positive"):
        search(space, timeout_s=0)


# ----------------------------------------------------------------------------- status and the dashboard
def test_status_shows_each_policys_rung(tiny, tmp_path):
    search(make_space(tiny, tmp_path))
    runner, url = CliRunner(), url_of(tmp_path)
    rows = json.loads(runner.invoke(app, ["status", "--storage", url, "--json"]).stdout)
    assert rows and {r["rung"] for r in rows} == {2} and {r["study"] for r in rows} == {"s"}
    assert any(r["on_front"] for r in rows)
    everything = json.loads(runner.invoke(app, ["status", "--storage", url, "--all-rungs", "--json"]).stdout)
    assert {r["rung"] for r in everything} == {0, 1, 2}
    assert not any(r["on_front"] for r in everything if r["rung"] < 2)  # a lower rung has no front
    promoted = [r for r in everything if r["rung"] == 0 and r["promoted_to"] is not None]
    assert promoted and all(r["budget"] == {"retrain_steps": 0, "reconstruct": "least_squares"} for r in promoted)
    res = runner.invoke(app, ["status", "--storage", url, "--rung", "1"], env={"COLUMNS": "250"})
    assert res.exit_code == 0 and "rung 1" in res.stdout and "promoted to" in res.stdout and "rung 2 #" in res.stdout
    res = runner.invoke(app, ["status", "--storage", url, "--rung", "3"])
    assert res.exit_code == 2 and "has rungs 0..2" in res.output


def test_progress_counts_rung_0_and_shows_every_rung(tiny, tmp_path):
    import io

    from autoprune.search._progress import Progress

    top = search(make_space(tiny, tmp_path))
    levels = [open_study(url_of(tmp_path), n) for n in ("s.rung0", "s.rung1")] + [top]
    n1, n2 = len(levels[1].trials), len(top.trials)
    buf = io.StringIO()
    with Progress(top, target=12, heartbeat_s=3600, stream=buf, levels=levels):
        pass
    last = buf.getvalue().splitlines()[-1]
    assert "12/12 finished at rung 0" in last
    assert f"[rung 0: 12 finished, rung 1: {n1} finished, top rung 2: {n2} finished]" in last

    class Tty(io.StringIO):
        def isatty(self):
            return True

    live = Tty()
    with Progress(top, target=12, stream=live, levels=levels):
        pass
    assert "finished 12/12 at rung 0" in live.getvalue() and "top rung 2:" in live.getvalue()


def test_dashboard_shows_the_rungs(tiny, tmp_path):
    from autoprune.dashboard import build_dashboard
    from autoprune.visualization import plot_rungs, rung_chains

    top = search(make_space(tiny, tmp_path))
    page = build_dashboard(top, storage=url_of(tmp_path))
    assert "<h2>Rungs</h2>" in page and "rung-table" in page and 'id="rungs"' in page
    assert "rung 0 (0 steps, least_squares)" in page and "s.rung0" in page
    levels = rungs(top)
    chains = rung_chains(levels)
    assert len(chains) == len(levels[0].finished)
    reached = [c for c in chains if len(c) == 3]
    assert len(reached) == len(levels[-1].records)
    fig = plot_rungs(top)
    names = {t.name for t in fig.data if t.name}
    assert {"not promoted", "rung 0, promoted"} <= names
    assert any(n.startswith("top rung") for n in names)
    with pytest.raises(StudyError, match="without rungs"):
        plot_rungs(optuna.create_study(directions=S.DIRECTIONS))


# ----------------------------------------------------------------------------- fast rung 0
def test_calibration_batches_are_drawn_once_per_worker(tiny_config):
    from autoprune.policy import PruningPolicy
    from autoprune.trial import _CONTEXTS, run_trial

    first = run_trial(tiny_config, PruningPolicy.uniform("gradient", 2, heads=0.5, ffn=0.5, retrain_steps=0, seed=1))
    (ctx,) = _CONTEXTS.values()
    cached = dict(ctx.calibration)
    second = run_trial(tiny_config, PruningPolicy.uniform("gradient", 2, heads=0.5, ffn=0.5, retrain_steps=0, seed=2))
    assert list(ctx.calibration) == [(32, 2)] and ctx.calibration[(32, 2)] is cached[(32, 2)]
    # the calibration set is the run's, not the policy's: two seeds score and cut the same units
    assert first.kept_heads == second.kept_heads and first.retrain_steps == 0
    assert first.speedup > 0 and first.phase_seconds["retrain"] == 0.0


def test_rung_0_reuses_the_dense_targets_and_fits_as_against_the_dense_model(tiny_config):
    from autoprune.policy import PruningPolicy
    from autoprune.pruner import prune
    from autoprune.trial import _CONTEXTS, run_trial

    pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=0, seed=1)
    pol = pol.model_copy(update={"reconstruct": "least_squares"})
    first = run_trial(tiny_config, pol)
    (ctx,) = _CONTEXTS.values()
    targets = ctx.targets[(32, 2)]
    second = run_trial(tiny_config, pol.model_copy(update={"seed": 2}))
    assert list(ctx.targets) == [(32, 2)] and ctx.targets[(32, 2)] is targets
    # the cached targets give the fit a fresh dense model and the calibration batches would give
    import copy

    model = copy.deepcopy(ctx.dense)
    rec = prune(model, pol, ctx.calibration_batches(32, 2), dense=ctx.dense)
    assert rec.kept_heads == first.prune_record["kept_heads"] == second.prune_record["kept_heads"]
    assert [r["ffn_error_after"] for r in rec.reconstruction] == pytest.approx(
        [r["ffn_error_after"] for r in first.prune_record["reconstruction"]], rel=1e-4, abs=1e-6)
    assert first.accuracy_pruned == second.accuracy_pruned and first.phase_seconds["reconstruct"] > 0


# ----------------------------------------------------------------------------- the benchmark's scoring
def test_benchmark_scores_arms_at_equal_wall_time(tiny, tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks import multifidelity as B

    space_file = tmp_path / "space.yaml"
    space = make_space(tiny, tmp_path, n_trials=6)
    import yaml

    space_file.write_text(yaml.safe_dump(space.raw()))
    storage = f"sqlite:///{tmp_path / 'bench.db'}"
    B.main(["-c", str(space_file), "--storage", storage, "--seeds", "1,2", "--minutes", "0.02",
            "--trials-in-flight", "1", "--results", str(tmp_path / "mf.json"), "--archive", str(tmp_path / "archive.db")],
           trial_fn=functools.partial(fake_trial, sleep=0.1, step_gain=0.1), executor=InProcessExecutor())
    doc = json.loads((tmp_path / "mf.json").read_text())["sections"]
    per_seed = doc["search"]["results"]["per_seed"]
    assert [p["seed"] for p in per_seed] == [1, 2]
    for p in per_seed:
        for arm in ("mf", "random"):
            assert p[arm]["arm_minutes"] >= 0.02 * 0.9 and p[arm]["hypervolume"] >= 0
        assert len(p["mf"]["per_rung_finished"]) == 3 and len(p["random"]["per_rung_finished"]) == 1
    # the correlation phase re-ran every policy the random arms completed, at rung 0, once
    full = B.full_budget_policies(storage, [1, 2])
    corr = doc["correlation"]["results"]
    assert corr["n"] == len(full) >= 3 and -1 <= corr["spearman"] <= 1
    assert sorted(tuple(p["source"]) for p in corr["pairs"]) == sorted((n, r.number) for n, r in full)
    # apart: the policies the mf arms carried to the top rung, rung 0 against the top
    tops = [t for s in (1, 2) for t in open_study(storage, f"mf_seed{s}").trials if t.state.name == "COMPLETE"]
    assert corr["promoted"]["n"] == len(tops)
    rung0 = optuna.load_study(study_name="correlation", storage=storage).trials
    assert all(t.user_attrs["policy"]["retrain"]["steps"] == 0 and t.user_attrs["policy"]["reconstruct"] ==
               "least_squares" for t in rung0)
    assert B.score_rung0(B.load_search_space(space_file), storage, [1, 2], trial_fn=FAKE) == 0
    names = set(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'archive.db'}"))
    assert {"mf_seed1", "mf_seed1.rung0", "mf_seed1.rung1", "random_seed1", "correlation"} <= names
    # a second run finds every arm's minutes spent: it adds no trial
    before = len(open_study(storage, "random_seed1").trials)
    B.main(["-c", str(space_file), "--storage", storage, "--seeds", "1", "--minutes", "0.02", "--phases", "search"],
           trial_fn=FAKE, executor=InProcessExecutor())
    assert len(open_study(storage, "random_seed1").trials) == before


def test_benchmark_gives_the_mf_arm_the_rungs_it_is_told(tiny, tmp_path):
    sys.path.insert(0, str(REPO))
    import yaml

    from autoprune.errors import AutopruneError
    from benchmarks import multifidelity as B

    space_file = tmp_path / "space.yaml"  # a space without rungs: the random arm's, and the mf arm's with --rungs
    space_file.write_text(yaml.safe_dump(make_space(tiny, tmp_path, n_trials=6, rungs=None).raw()))
    storage = f"sqlite:///{tmp_path / 'bench.db'}"
    told = "[{retrain_steps: 0, reconstruct: least_squares, also_final: true}, {retrain_steps: full}]"
    B.main(["-c", str(space_file), "--storage", storage, "--seeds", "1", "--minutes", "0.02", "--phases", "search",
            "--trials-in-flight", "1", "--rungs", told, "--promote-fraction", "0.5"],
           trial_fn=FAKE, executor=InProcessExecutor())
    mf, rnd = open_study(storage, "mf_seed1"), open_study(storage, "random_seed1")
    assert mf.user_attrs[S.ATTR_RUNGS] == [{**r, "reconstruct": r.get("reconstruct")} for r in yaml.safe_load(told)]
    assert mf.user_attrs[S.ATTR_SPACE]["promote_fraction"] == 0.5 and not rungs(rnd)
    for bad, needle in (("[{retrain_steps: 0", "--rungs: not YAML"),
                        ("[{retrain_steps: full, also_final: true}]", "at least two levels")):
        with pytest.raises(AutopruneError, match=needle):
            B.main(["-c", str(space_file), "--storage", storage, "--seeds", "1", "--phases", "report", "--rungs", bad],
                   trial_fn=FAKE, executor=InProcessExecutor())


def test_arm_clock_scores_only_what_finished_in_time():
    sys.path.insert(0, str(REPO))
    import datetime as dt

    from benchmarks import multifidelity as B

    st = optuna.create_study(directions=S.DIRECTIONS)
    t0 = dt.datetime(2026, 12, 1, 12)
    for minute, values in ((1, [0.86, 1.5]), (3, [0.88, 2.0]), (9, [0.89, 3.0])):
        t = create_trial(values=values)
        t.datetime_start, t.datetime_complete = t0, t0 + dt.timedelta(minutes=minute)
        st.add_trial(t)
    start = t0.timestamp()
    segments = [[start, start + 120], [start + 170, start + 600]]  # stopped from 2:00 to 2:50
    pts = B.scored(trial_records(st), segments, budget_s=180)
    assert [(round(t), r.number) for t, r in pts] == [(60, 0), (130, 1)]  # the 9-minute one is past 3 arm-minutes
    # (0.86, 1.5) alone dominates 0.5 x 0.01 above (0.85, 1.0); (0.88, 2.0) then dominates it: 1.0 x 0.03
    assert B.time_to(pts, (0.85, 1.0), 0.02) == 130 and B.time_to(pts, (0.85, 1.0), 0.031) is None
    assert math.isclose(hypervolume([r for _, r in pts], (0.85, 1.0)), 0.03)


# ----------------------------------------------------------------------------- a real Ray
@pytest.mark.slow
def test_rungs_on_a_real_ray(tiny, tmp_path):
    from autoprune.search import RayExecutor

    space = make_space(tiny, tmp_path, n_trials=6, accuracy_drop_floor=None)
    top = run_search(space, study_name="s", trial_fn=FAKE, dense_metrics=DENSE, progress=False, executor=RayExecutor())
    levels = _promotion_invariants(url_of(tmp_path), space)
    assert len(levels[0].finished) == 6 and levels[-1].records and front(top)
    assert all(r.node_id for lvl in levels for r in lvl.records)
