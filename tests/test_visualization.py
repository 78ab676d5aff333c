"""autoprune.visualization: each figure of a study, drawn from what the study records."""

from __future__ import annotations

import optuna
import plotly.graph_objects as go
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autoprune import _study as S
from autoprune.errors import StudyError
from autoprune.study import trial_records
from autoprune.visualization import (hover_text, plot_criteria, plot_front, plot_history, plot_importances,
                                     plot_layer_profiles)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (criterion, head sparsity, FFN sparsity, accuracy, speedup)
TRIALS = [("l1", 0.2, 0.3, 0.90, 1.4), ("l1", 0.5, 0.5, 0.86, 2.1), ("l2", 0.4, 0.2, 0.88, 1.6),
          ("gradient", 0.7, 0.6, 0.87, 2.6), ("random", 0.3, 0.3, 0.80, 1.5), ("l2", 0.1, 0.1, 0.91, 1.1)]


def _add(st, crit, h, f, acc, sp, *, rung=None, layers=3):
    pol = {"criterion": crit, "granularity": "structured", "head_sparsity": [h] * layers, "ffn_sparsity": [f] * layers,
           "retrain": {"steps": 40}, "quantize": crit == "gradient"}
    res = {"accuracy": acc, "speedup": sp, "accuracy_drop": 0.92 - acc, "macro_f1": acc - 0.01, "flops_reduction": sp,
           "heads_per_layer": [round(4 * (1 - h))] * layers, "ffn_per_layer": [round(64 * (1 - f))] * layers}
    attrs = {S.T_POLICY: pol, S.T_SUMMARY: f"{crit} h{h} f{f}", S.T_RESULT: res}
    if rung is not None:
        attrs[S.T_RUNG] = rung
    st.add_trial(create_trial(values=[acc, sp], params={"h": h, "f": f, "criterion": crit},
                              distributions={"h": FloatDistribution(0, 1), "f": FloatDistribution(0, 1),
                                             "criterion": CategoricalDistribution(["random", "gradient", "l1", "l2"])},
                              user_attrs=attrs))


@pytest.fixture
def study():
    st = optuna.create_study(directions=S.DIRECTIONS, study_name="viz")
    st.set_user_attr(S.ATTR_DENSE, {"accuracy": 0.92})
    st.set_user_attr(S.ATTR_FLOOR, 0.82)
    for t in TRIALS:
        _add(st, *t)
    st.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={S.T_PRUNE: "below the floor"}))
    st.add_trial(create_trial(state=TrialState.FAIL, user_attrs={S.T_DUPLICATE: True}))
    return st


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_front_figure_joins_the_front_and_draws_dense_and_floor(study):
    fig = plot_front(study)
    assert isinstance(fig, go.Figure)
    joined = _trace(fig, "front (joined)")
    # the non-dominated trials by speedup: 5 (0.91 @ 1.1x), 0 (0.90 @ 1.4x), 2 (0.88 @ 1.6x), 3 (0.87 @ 2.6x)
    assert list(joined.text) == ["#5", "#0", "#2", "#3"] and list(joined.x) == [1.1, 1.4, 1.6, 2.6]
    dense = _trace(fig, "dense baseline")
    assert list(dense.x) == [1.0] and list(dense.y) == [0.92]
    assert [s.y0 for s in fig.layout.shapes] == [0.82]  # the accuracy floor
    # Optuna's own Pareto plot underneath, its points re-labelled with autoprune's hover text
    hovers = [h for t in fig.data if t.name in ("Pareto front", "dominated trial") for h in t.text]
    assert sorted(h.split("</b>")[0] for h in hovers) == sorted(f"<b>trial {i}" for i in range(len(TRIALS)))


def test_front_figure_leaves_out_lower_rungs(study):
    _add(study, "l1", 0.9, 0.9, 0.99, 5.0, rung=0)   # a low-fidelity trial that would dominate everything
    _add(study, "l1", 0.1, 0.1, 0.905, 1.2, rung=1)  # the top rung: counts
    assert list(_trace(plot_front(study), "front (joined)").text) == ["#5", "#9", "#0", "#2", "#3"]


def test_hover_text_names_the_policy_and_the_metrics(study):
    rec = trial_records(study)[3]
    text = hover_text(rec)
    for part in ("<b>trial 3</b>", "criterion: gradient", "head sparsity: [0.70, 0.70, 0.70]",
                 "retraining steps: 40 (int8)", "accuracy: 0.8700 (drop 5.00 pts)", "speedup: 2.60x"):
        assert part in text, part


def test_layer_profiles_show_each_front_trial_per_layer(study):
    fig = plot_layer_profiles(study)
    heads = [t for t in fig.data if t.xaxis == "x"]
    ffn = [t for t in fig.data if t.xaxis == "x2"]
    assert [t.name.split()[0] for t in heads] == ["#5", "#0", "#2", "#3"] and len(ffn) == 4
    assert list(heads[3].y) == [0.7, 0.7, 0.7] and list(ffn[3].y) == [0.6, 0.6, 0.6]
    assert "(1 kept)" in heads[3].hovertext[0]  # 4 heads, 70% removed: 1 left
    assert len(fig.layout.annotations) == 2  # no unstructured trial: no third panel


def test_layer_profiles_add_a_panel_for_unstructured_fronts():
    st = optuna.create_study(directions=S.DIRECTIONS)
    st.add_trial(create_trial(values=[0.9, 1.2], user_attrs={
        S.T_POLICY: {"criterion": "l1", "granularity": "unstructured", "weight_sparsity": [0.5, 0.6]}}))
    fig = plot_layer_profiles(st)
    assert fig.layout.annotations[2].text == "weights zeroed per layer (unstructured)"
    assert [list(t.y) for t in fig.data] == [[0.5, 0.6]]


def test_criteria_figure_has_one_front_per_criterion(study):
    fig = plot_criteria(study)
    fronts = {t.name: list(t.x) for t in fig.data if " front " in t.name}
    assert fronts == {"random front (1 trials)": [1.5], "gradient front (1 trials)": [2.6],
                      "l1 front (2 trials)": [1.4, 2.1], "l2 front (2 trials)": [1.1, 1.6]}


def test_history_counts_trials_by_state_and_tracks_the_best_accuracy_at_each_speedup(study):
    fig = plot_history(study)
    final = {t.name: t.y[-1] for t in fig.data if t.xaxis == "x"}
    assert final == {"complete": 6, "pruned": 1, "duplicate skipped": 1}
    best15 = list(_trace(fig, "best accuracy at >= 1.5x").y)
    # trials 0 (1.4x) is below the mark; 1 (0.86 @ 2.1x), then 2 (0.88), then nothing better
    assert best15 == [None, 0.86, 0.88, 0.88, 0.88, 0.88, 0.88, 0.88]
    assert not fig.layout.annotations[2:]  # both marks reached: no "not reached" note
    fig3 = plot_history(study, speedup_marks=(3.0,))
    assert "no completed trial has reached 3x yet" in fig3.layout.annotations[-1].text


def test_importances_need_enough_completed_trials(study):
    few = optuna.create_study(directions=S.DIRECTIONS)
    for t in TRIALS[:3]:
        _add(few, *t)
    with pytest.raises(StudyError, match="need 5 completed trials; the study has 3"):
        plot_importances(few)
    fig = plot_importances(study, "speedup")
    assert sorted(fig.data[0].y) == ["criterion", "f", "h"] and sum(fig.data[0].x) == pytest.approx(1.0)
    assert fig.layout.title.text == "Parameter importance for speedup (optuna.importance)"
    with pytest.raises(StudyError, match="objective 'latency'"):
        plot_importances(study, "latency")


def test_an_empty_study_still_gives_figures():
    st = optuna.create_study(directions=S.DIRECTIONS)
    assert not [t for t in plot_front(st).data if len(t.x or ())]
    assert len(plot_history(st).data) == 2  # the two best-accuracy lines, empty
    assert plot_criteria(st).data == ()
