"""autoprune.study: locating a study, its trials as records, which count, the front and its hypervolume."""

from __future__ import annotations

import random

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from autoprune import _study as S
from autoprune.errors import ConfigError, StudyError
from autoprune.study import (REF_MARGIN, completed_trials, counted_trials, create_study, dense_accuracy, front,
                             hypervolume, load_study, locate, record_result, reference_point, study_info,
                             trial_records)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(points, storage=None, name=None):
    st = optuna.create_study(directions=S.DIRECTIONS, storage=storage, study_name=name)
    for p in points:
        acc, sp, *rung = p
        st.add_trial(create_trial(values=[acc, sp], user_attrs={S.T_RUNG: rung[0]} if rung else {}))
    return st


# ----------------------------------------------------------------------------- locating
def test_locate_follows_the_search_convention_for_a_space_file(tiny_config, tmp_path):
    run_dir = tmp_path / "runs"
    space = tmp_path / "myspace.yaml"
    space.write_text(yaml.safe_dump({"config": dict(tiny_config.model_dump(mode="json"), run_dir=str(run_dir))}))
    loc = locate(space)
    assert loc.study_name == "myspace" and loc.run_dir == run_dir.resolve()
    assert loc.storage == f"sqlite:///{run_dir.resolve() / 'myspace.db'}"
    other = locate(space, study_name="other", storage="sqlite:///elsewhere/x.db")
    assert (other.study_name, other.storage) == ("other", "sqlite:///elsewhere/x.db")
    with pytest.raises(StudyError, match="does not exist"):  # nothing searched yet
        loc.open()
    assert not run_dir.exists()  # locating and failing to open a study writes nothing
    run_dir.mkdir()  # (a search makes it; here a study is written directly)
    st = _study([(0.9, 1.5)], storage=loc.storage, name="myspace")
    assert load_study(space).study_name == "myspace" and len(trial_records(st)) == 1


def test_locate_needs_a_space_or_a_storage_and_names_missing_studies(tmp_path):
    with pytest.raises(StudyError, match="no study given"):
        locate()
    url = f"sqlite:///{tmp_path / 'two.db'}"
    assert locate(storage=url).run_dir == tmp_path
    _study([], storage=url, name="a")
    _study([], storage=url, name="b")
    with pytest.raises(StudyError, match=r"'nope' not found.*a, b"):
        load_study(storage=url, study_name="nope")
    with pytest.raises(StudyError, match="holds 2 studies"):
        load_study(storage=url)
    with pytest.raises(ConfigError):
        locate(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- records
def test_records_carry_the_schema_in_plain_fields():
    st = optuna.create_study(directions=S.DIRECTIONS)
    st.add_trial(create_trial(values=[0.9, 1.5], user_attrs={
        S.T_POLICY: {"criterion": "l2", "granularity": "unstructured"}, S.T_SUMMARY: "l2 weights",
        S.T_RESULT: {"accuracy": 0.9, "macro_f1": 0.88}, S.T_HISTORY: [[10, 0.8], [20, 0.9]], "node_id": "n1"}))
    st.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={S.T_PRUNE: "below the floor"}))
    st.add_trial(create_trial(state=TrialState.FAIL, user_attrs={S.T_FAIL: "dup", S.T_DUPLICATE: True}))
    st.add_trial(create_trial(state=TrialState.FAIL, user_attrs={S.T_FAIL: "stopped", S.T_ORPHANED: True}))
    st.add_trial(create_trial(state=TrialState.FAIL, user_attrs={S.T_FAIL: "nan loss", S.T_RUNG: 1}))
    done, pruned, dup, orphan, failed = trial_records(st)
    assert (done.state, done.label, done.counted, done.complete) == ("COMPLETE", "complete", True, True)
    assert (done.criterion, done.granularity, done.summary, done.node_id) == ("l2", "unstructured", "l2 weights", "n1")
    assert done.result == {"accuracy": 0.9, "macro_f1": 0.88} and done.history == [[10, 0.8], [20, 0.9]]
    assert (done.accuracy, done.speedup, done.rung) == (0.9, 1.5, None)
    assert (pruned.label, pruned.counted, pruned.reason, pruned.accuracy) == ("pruned", True, "below the floor", None)
    assert (dup.label, dup.counted) == ("duplicate skipped", False)
    assert (orphan.label, orphan.counted) == ("re-enqueued", False)
    assert (failed.label, failed.counted, failed.reason, failed.rung) == ("fail", True, "nan loss", 1)
    assert [r.number for r in counted_trials(st)] == [0, 1, 4]
    assert [r.number for r in counted_trials(st, first=2)] == [0, 1]
    assert [r.number for r in completed_trials(st)] == [0]
    assert done.policy is not st.trials[0].user_attrs[S.T_POLICY]  # a copy: editing a record edits no trial


def test_durations_come_from_the_trial_times():
    import datetime as dt

    st = optuna.create_study(directions=S.DIRECTIONS)
    t = create_trial(values=[0.9, 1.5])
    t.datetime_start = dt.datetime(2026, 1, 1, 12)
    t.datetime_complete = t.datetime_start + dt.timedelta(seconds=90)
    st.add_trial(t)
    assert trial_records(st)[0].duration_s == 90.0


# ----------------------------------------------------------------------------- front
def test_front_matches_optunas_best_trials_on_random_studies():
    rng = random.Random(3)
    for _ in range(20):
        pts = [(round(rng.uniform(0.8, 0.95), 2), round(rng.uniform(1.0, 3.0), 1)) for _ in range(rng.randint(1, 30))]
        st = _study(pts)
        assert [r.number for r in front(st)] == sorted((t.number for t in st.best_trials),
                                                       key=lambda n: (st.trials[n].values[1], n))


def test_front_is_sorted_by_speedup_and_keeps_ties():
    st = _study([(0.85, 2.5), (0.90, 1.5), (0.90, 1.5), (0.80, 2.0)])
    assert [(r.number, r.speedup) for r in front(st)] == [(1, 1.5), (2, 1.5), (0, 2.5)]
    assert front(optuna.create_study(directions=S.DIRECTIONS)) == []


def test_front_keeps_only_the_top_rung_and_counts_trials_without_a_rung_as_top():
    # a low-fidelity rung-0 trial (trial 0) looks best but was not run at full fidelity
    st = _study([(0.99, 3.0, 0), (0.90, 1.5, 1), (0.85, 2.0), (0.80, 1.2, 1)])
    assert [r.number for r in front(st)] == [1, 2]
    assert [r.number for r in front(st, top_rung_only=False)] == [0]
    assert hypervolume(st, (0.8, 1.0)) == pytest.approx(0.1 * 0.5 + 0.05 * 0.5)
    assert hypervolume(st, (0.8, 1.0), top_rung_only=False) == pytest.approx(0.19 * 2.0)


# ----------------------------------------------------------------------------- hypervolume
def test_hypervolume_of_a_two_objective_front():
    ref = (0.85, 1.0)
    assert hypervolume([(0.9, 2.0)], ref) == pytest.approx(0.05)
    # a dominated point adds nothing; a point below the reference adds nothing
    assert hypervolume([(0.9, 2.0), (0.88, 1.5), (0.80, 3.0)], ref) == pytest.approx(0.05)
    # staircase: (0.95, 1.5) adds the strip between 0.9 and 0.95 up to 1.5x
    assert hypervolume([(0.9, 2.0), (0.95, 1.5)], ref) == pytest.approx(0.05 + 0.5 * 0.05)
    assert hypervolume([], ref) == 0


def test_hypervolume_agrees_with_optunas_own_computation_and_reads_studies_and_records():
    from optuna._hypervolume import compute_hypervolume  # an independent implementation, as an oracle

    rng = random.Random(7)
    ref = (0.8, 1.0)
    for _ in range(20):
        pts = [(rng.uniform(0.75, 0.95), rng.uniform(0.9, 3.5)) for _ in range(rng.randint(1, 25))]
        above = np.array([[-a, -s] for a, s in pts if a > ref[0] and s > ref[1]]).reshape(-1, 2)
        expected = compute_hypervolume(above, np.array([-ref[0], -ref[1]])) if len(above) else 0.0
        st = _study(pts)
        assert hypervolume(pts, ref) == pytest.approx(expected, abs=1e-9)
        assert hypervolume(st, ref) == hypervolume(trial_records(st), ref) == hypervolume(pts, ref)


def test_reference_point_is_the_margin_below_dense_at_speedup_one():
    assert reference_point(0.9) == pytest.approx((0.9 - REF_MARGIN, 1.0))
    assert reference_point(0.9, margin=0.1) == pytest.approx((0.8, 1.0))


# ----------------------------------------------------------------------------- study attributes and writing
def test_study_info_and_dense_accuracy():
    st = optuna.create_study(directions=S.DIRECTIONS, study_name="s")
    info = study_info(st)
    assert (info.name, info.config, info.dense, info.accuracy_floor, info.baseline_dir) == ("s", {}, {}, None, None)
    assert dense_accuracy(st) is None
    st.add_trial(create_trial(values=[0.8, 2.0], user_attrs={S.T_RESULT: {"dense_accuracy": 0.91}}))
    assert dense_accuracy(st) == 0.91  # no study attribute: the trials' record of it
    for k, v in ((S.ATTR_DENSE, {"accuracy": 0.9, "macro_f1": 0.89}), (S.ATTR_FLOOR, 0.85),
                 (S.ATTR_CONFIG, {"model": {"name_or_path": "m"}}), (S.ATTR_SPACE, {"seed": 3}),
                 (S.ATTR_BASELINE_DIR, "/b")):
        st.set_user_attr(k, v)
    info = study_info(st)
    assert info.dense["macro_f1"] == 0.89 and info.accuracy_floor == 0.85 and info.space == {"seed": 3}
    assert info.config["model"]["name_or_path"] == "m" and info.baseline_dir == "/b"
    assert dense_accuracy(st) == 0.9


def test_results_recorded_outside_a_search_read_like_a_search(tmp_path):
    from autoprune.policy import PruningPolicy
    from autoprune.testing import fake_result

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    st = create_study("sweep", url)
    pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5)
    assert record_result(st, pol, fake_result(pol, 0.88, 1.6), wall_seconds=12.0) == 0
    again = create_study("sweep", url)  # the existing study, not a second one
    rec = trial_records(again)[0]
    assert (rec.accuracy, rec.speedup, rec.counted, rec.summary) == (0.88, 1.6, True, pol.summary())
    assert rec.policy == pol.to_dict() and rec.result["accuracy"] == 0.88 and rec.user_attrs["wall_seconds"] == 12.0
    assert again.metric_names == S.METRIC_NAMES and optuna.get_all_study_names(url) == ["sweep"]
