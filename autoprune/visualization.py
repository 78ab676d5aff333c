"""Figures of a study, each a ``plotly.graph_objects.Figure`` a notebook can show (``fig.show()``).

* :func:`plot_front`: validation accuracy against measured speedup; every completed trial a point,
  the Pareto front highlighted and joined, the dense baseline and the accuracy floor drawn.
* :func:`plot_layer_profiles`: per-layer sparsity of the front's trials side by side.
* :func:`plot_criteria`: the front of each pruning criterion separately.
* :func:`plot_history`: progress over the trial number (trials by state, best accuracy at a
  minimum speedup).
* :func:`plot_importances`: Optuna's parameter importances for one objective.
* :func:`plot_rungs`: a multi-fidelity search's rungs: which policies were promoted and how their
  accuracy moved from rung to rung.

Hover a point for its policy and metrics. :mod:`autoprune.dashboard` puts these figures on one page.

Example (a study of two trials):
    >>> import optuna
    >>> s = optuna.create_study(directions=["maximize", "maximize"])
    >>> s.add_trial(optuna.trial.create_trial(values=[0.90, 1.5], user_attrs={"policy": {"criterion": "l1"}}))
    >>> s.add_trial(optuna.trial.create_trial(values=[0.85, 2.5], user_attrs={"policy": {"criterion": "l2"}}))
    >>> fig = plot_front(s)
    >>> fig.layout.title.text
    'Pareto front: validation accuracy vs measured speedup'
    >>> sorted(t.name for t in plot_criteria(s).data)
    ['l1 (dominated)', 'l1 front (1 trials)', 'l2 (dominated)', 'l2 front (1 trials)']
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from typing import Any, Sequence

from autoprune import _study as S
from autoprune.errors import StudyError
from autoprune.study import (RungInfo, TrialRecord, completed_trials, dense_accuracy, front, rungs, study_info,
                             trial_records)

logger = logging.getLogger(__name__)

SPEEDUP_MARKS = (1.5, 2.0)
MIN_TRIALS_FOR_IMPORTANCE = 5
_CRITERION_PALETTE = ("#7f7f7f", "#d62728", "#1f77b4", "#2ca02c")  # in the order of autoprune.criteria.criterion_names() (then plotly defaults)
_STATE_COLORS = {"complete": "#2ca02c", "pruned": "#ff7f0e", "fail": "#d62728", "running": "#1f77b4",
                 "waiting": "#9467bd", S.LABEL_DUPLICATE: "#7f7f7f", S.LABEL_ORPHANED: "#8c564b"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f")


# ----------------------------------------------------------------------------- hover text
def fmt_number(x: Any, fmt: str = ".4f") -> str:
    """A number for a table or hover text: '-' for None, 'nan' for NaN.

    Example:
        >>> fmt_number(0.91234), fmt_number(None), fmt_number(2.0, ".2f")
        ('0.9123', '-', '2.00')
    """
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    try:
        return format(x, fmt)
    except (TypeError, ValueError):
        return str(x)


def _sparsity_list(v: Sequence[float] | None) -> str:
    return "-" if not v else "[" + ", ".join(f"{x:.2f}" for x in v) + "]"


def _retrain_steps(r: TrialRecord) -> Any:
    if r.result and "retrain_steps" in r.result:
        return r.result["retrain_steps"]
    return (r.policy.get("retrain") or {}).get("steps")


def hover_text(r: TrialRecord) -> str:
    """The hover text of a completed trial: its policy and its metrics (HTML line breaks)."""
    res, p = r.result or {}, r.policy
    lines = [f"<b>trial {r.number}</b>", f"criterion: {r.criterion}", f"granularity: {r.granularity}"]
    if r.granularity == "unstructured":
        lines.append(f"weight sparsity: {_sparsity_list(p.get('weight_sparsity'))}")
    else:
        lines.append(f"head sparsity: {_sparsity_list(p.get('head_sparsity'))}")
        lines.append(f"FFN sparsity: {_sparsity_list(p.get('ffn_sparsity'))}")
    extra = []
    if p.get("iterative_steps", 1) != 1:
        extra.append(f"{p['iterative_steps']} iterative steps")
    if p.get("distillation"):
        extra.append(f"KD weight {p['distillation'].get('weight')}")
    if p.get("quantize"):
        extra.append("int8, quantization-aware" if p.get("qat") else "int8")
    lines.append(f"retraining steps: {_retrain_steps(r)}" + (f" ({', '.join(extra)})" if extra else ""))
    lines.append(f"accuracy: {fmt_number(r.accuracy)}"
                 + (f" (drop {100 * res['accuracy_drop']:.2f} pts)" if res.get("accuracy_drop") is not None else ""))
    lines.append(f"macro-F1: {fmt_number(res.get('macro_f1'))}")
    label = res.get("speed_label", "measured")
    lines.append(f"speedup: {fmt_number(r.speedup, '.2f')}x" + ("" if label == "measured" else f" ({label})"))
    if res.get("speed_flags"):
        lines.append(f"speedup flagged: {'; '.join(res['speed_flags'])}")
    lines.append(f"FLOPs reduction: {fmt_number(res.get('flops_reduction'), '.2f')}x")
    if res.get("params") is not None:
        lines.append(f"params: {res['params']:,}" + (f" of {res['dense_params']:,}" if res.get("dense_params") else ""))
    return "<br>".join(lines)


def _xy(records: Sequence[TrialRecord]) -> dict[str, list[Any]]:
    return {"x": [r.speedup for r in records], "y": [r.accuracy for r in records]}


# ----------------------------------------------------------------------------- figures
def _optuna_pareto(study: Any, by_number: dict[int, TrialRecord]) -> Any | None:
    """Optuna's own Pareto plot (x = speedup, y = accuracy) with autoprune's hover texts, or None."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_pareto_front(
                study, targets=lambda t: (t.values[1], t.values[0]), target_names=["speedup", "accuracy"])
    except Exception as exc:  # pragma: no cover - depends on Optuna internals
        logger.info("optuna.visualization.plot_pareto_front unavailable (%s); plotting directly", exc)
        return None
    for tr in fig.data:
        new = []
        for t in list(tr.text or []):
            try:
                num = json.loads(t.replace("<br>", "\n"))["number"]
                new.append(hover_text(by_number[num]) if num in by_number else f"trial {num}")
            except (ValueError, KeyError, TypeError):
                new.append(t)
        is_best = "Best" in (tr.hovertemplate or "")
        tr.update(text=new, hovertemplate="%{text}<extra></extra>", showlegend=True,
                  name="Pareto front" if is_best else "dominated trial")
        tr.marker.update(color="#d62728" if is_best else "#b0b0b0", colorscale=None, showscale=False,
                         size=10 if is_best else 8, line=dict(width=0))
    return fig


def plot_front(study: Any) -> Any:
    """Validation accuracy against measured speedup: every completed trial, the front joined by a
    line and labelled with trial numbers, the dense baseline (a star at 1.0x) and the accuracy floor."""
    import plotly.graph_objects as go

    points = completed_trials(study)
    fr = front(points)
    dense_acc, floor = dense_accuracy(study), study_info(study).accuracy_floor
    fig = _optuna_pareto(study, {r.number: r for r in points}) if points else None
    if fig is None:
        fig = go.Figure()
        on = {r.number for r in fr}
        dominated = [r for r in points if r.number not in on]
        fig.add_trace(go.Scatter(**_xy(dominated), mode="markers", name="dominated trial",
                                 marker=dict(color="#b0b0b0", size=8), text=[hover_text(r) for r in dominated],
                                 hovertemplate="%{text}<extra></extra>"))
        fig.add_trace(go.Scatter(**_xy(fr), mode="markers", name="Pareto front", marker=dict(color="#d62728", size=11),
                                 text=[hover_text(r) for r in fr], hovertemplate="%{text}<extra></extra>"))
    if fr:
        fig.add_trace(go.Scatter(**_xy(fr), mode="lines+markers+text", name="front (joined)",
                                 line=dict(color="#d62728", width=2, shape="linear"),
                                 marker=dict(color="#d62728", size=13, symbol="circle-open", line=dict(width=2)),
                                 text=[f"#{r.number}" for r in fr], textposition="top center",
                                 hovertext=[hover_text(r) for r in fr], hoverinfo="text"))
    if dense_acc is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[dense_acc], mode="markers+text", name="dense baseline",
                                 marker=dict(symbol="star", size=18, color="black"), text=["dense"],
                                 textposition="bottom right",
                                 hovertext=[f"<b>dense baseline</b><br>speedup: 1.00x<br>accuracy: {dense_acc:.4f}"],
                                 hoverinfo="text"))
    if floor is not None:
        fig.add_hline(y=floor, line=dict(color="#ff7f0e", dash="dash"),
                      annotation_text=f"accuracy floor {floor:.4f}", annotation_position="bottom left")
    fig.update_layout(title="Pareto front: validation accuracy vs measured speedup",
                      xaxis_title="measured speedup vs dense (x)", yaxis_title="validation accuracy",
                      height=560, legend=dict(orientation="h", y=-0.15), hoverlabel=dict(align="left"))
    return fig


def plot_layer_profiles(study: Any) -> Any:
    """The fraction of attention heads and FFN neurons (or, unstructured, weights) each front trial
    removes per encoder layer, one line per trial."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fr = front(study)
    unstructured = any(r.granularity == "unstructured" for r in fr)
    titles = ["attention heads removed per layer", "FFN neurons removed per layer"]
    if unstructured:
        titles.append("weights zeroed per layer (unstructured)")
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True)
    for k, r in enumerate(fr):
        color = _PALETTE[k % len(_PALETTE)]
        name = f"#{r.number} ({r.speedup:.2f}x, {r.accuracy:.3f})"
        series = [("head_sparsity", "heads_per_layer"), ("ffn_sparsity", "ffn_per_layer")]
        if unstructured:
            series.append(("weight_sparsity", None))
        for col, (key, kept_key) in enumerate(series, start=1):
            vals = r.policy.get(key)
            if not vals:
                continue
            kept = (r.result or {}).get(kept_key) if kept_key else None
            hover = [f"trial {r.number}, layer {i}: {v:.2f} removed"
                     + (f" ({kept[i]} kept)" if kept and i < len(kept) else "") for i, v in enumerate(vals)]
            fig.add_trace(go.Scatter(x=list(range(len(vals))), y=vals, mode="lines+markers", name=name,
                                     legendgroup=name,
                                     showlegend=col == 1 or (col == 3 and not r.policy.get("head_sparsity")),
                                     line=dict(color=color), hovertext=hover, hoverinfo="text"), row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.0], title_text="fraction removed", row=1, col=1)
    fig.update_xaxes(title_text="encoder layer", dtick=1)
    fig.update_layout(title="Per-layer sparsity of the Pareto-front trials", height=430)
    return fig


def plot_criteria(study: Any) -> Any:
    """The front of each pruning criterion (its dominated trials faint), with the dense baseline."""
    import plotly.graph_objects as go

    from autoprune.criteria import criterion_names

    points = completed_trials(study)
    dense_acc = dense_accuracy(study)
    colors = dict(zip(criterion_names(), _CRITERION_PALETTE))
    fig = go.Figure()
    for crit in list(criterion_names()) + sorted({r.criterion for r in points} - set(criterion_names())):
        pts = [r for r in points if r.criterion == crit]
        if not pts:
            continue
        color = colors.get(crit, "#17becf")
        fr = front(pts)
        on = {r.number for r in fr}
        others = [r for r in pts if r.number not in on]
        fig.add_trace(go.Scatter(**_xy(others), mode="markers", name=f"{crit} (dominated)", legendgroup=crit,
                                 showlegend=False, marker=dict(color=color, size=6, opacity=0.35),
                                 hovertext=[hover_text(r) for r in others], hoverinfo="text"))
        fig.add_trace(go.Scatter(**_xy(fr), mode="lines+markers", name=f"{crit} front ({len(pts)} trials)",
                                 legendgroup=crit, line=dict(color=color, width=2), marker=dict(color=color, size=10),
                                 hovertext=[hover_text(r) for r in fr], hoverinfo="text"))
    if dense_acc is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[dense_acc], mode="markers", name="dense baseline",
                                 marker=dict(symbol="star", size=16, color="black"),
                                 hovertext=[f"dense baseline: accuracy {dense_acc:.4f}"], hoverinfo="text"))
    fig.update_layout(title="Pareto front of each criterion", xaxis_title="measured speedup (x)",
                      yaxis_title="validation accuracy", height=480, hoverlabel=dict(align="left"))
    return fig


def plot_history(study: Any, speedup_marks: Sequence[float] = SPEEDUP_MARKS) -> Any:
    """Progress over the trial number: trials by state (cumulative), and the best accuracy of a
    completed trial at or above each of ``speedup_marks``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = trial_records(study)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["trials by state (cumulative)",
                                                        "best accuracy at a minimum speedup"])
    numbers = [r.number for r in records]
    for state in ("complete", "pruned", "fail", "running", "waiting", *S.BOOKKEEPING_LABELS):
        counts, c = [], 0
        for r in records:
            c += r.label == state
            counts.append(c)
        if c:
            fig.add_trace(go.Scatter(x=numbers, y=counts, mode="lines", name=state,
                                     line=dict(color=_STATE_COLORS.get(state), shape="hv",
                                               dash="dot" if state in S.BOOKKEEPING_LABELS else "solid")),
                          row=1, col=1)
    reached_none: list[str] = []
    for mark, dash in zip(speedup_marks, ("solid", "dot", "dash", "dashdot")):
        best: float | None = None
        ys = []
        for r in records:
            if r.complete and r.speedup >= mark:  # type: ignore[operator]
                best = r.accuracy if best is None else max(best, r.accuracy)  # type: ignore[type-var]
            ys.append(best)
        fig.add_trace(go.Scatter(x=numbers, y=ys, mode="lines", name=f"best accuracy at >= {mark:g}x",
                                 line=dict(dash=dash, shape="hv", width=2), connectgaps=False), row=1, col=2)
        if best is None:
            reached_none.append(f"{mark:g}x")
    if reached_none:
        fig.add_annotation(text="no completed trial has reached " + " or ".join(reached_none) + " yet",
                           xref="x2 domain", yref="y2 domain", x=0.5, y=0.5, showarrow=False,
                           font=dict(color="#7a5200"))
    fig.update_xaxes(title_text="trial number")
    fig.update_yaxes(title_text="trials", row=1, col=1)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=2)
    fig.update_layout(title="Progress over the search", height=420)
    return fig


def plot_importances(study: Any, objective: str = "accuracy") -> Any:
    """Optuna's parameter importances (``optuna.importance.get_param_importances``) for ``objective``
    (``accuracy`` or ``speedup``) as a horizontal bar chart.

    Raises :class:`~autoprune.errors.StudyError` when the study has fewer than
    ``MIN_TRIALS_FOR_IMPORTANCE`` completed trials or no parameter to rank; Optuna's own errors
    (e.g. every trial drew the same values) pass through.
    """
    import optuna
    import plotly.graph_objects as go

    if objective not in S.METRIC_NAMES:
        raise StudyError(f"objective {objective!r}: choose one of {', '.join(S.METRIC_NAMES)}")
    n_complete = len(completed_trials(study))
    if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        raise StudyError(f"parameter importances need {MIN_TRIALS_FOR_IMPORTANCE} completed trials; the study "
                         f"has {n_complete}")
    i = S.METRIC_NAMES.index(objective)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = optuna.importance.get_param_importances(study, target=lambda t: t.values[i])
    if not imp:
        raise StudyError(f"no parameters to rank for {objective}")
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker_color="#1f77b4" if i == 0 else "#2ca02c",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=f"Parameter importance for {objective} (optuna.importance)",
                      xaxis_title="importance (normalised)", height=max(280, 140 + 34 * len(items)))
    fig.update_yaxes(automargin=True, tickmode="array", tickvals=[k for k, _ in items])
    return fig


def rung_chains(levels: Sequence[RungInfo]) -> list[list[TrialRecord]]:
    """Each policy's trials rung by rung, following the promotions: one list per rung-0 trial that
    counts (its trial at rung 0, then the trial it was promoted to at rung 1, ...).

    Example:
        >>> import optuna
        >>> rung_chains(rungs(optuna.create_study(directions=["maximize", "maximize"])))
        []
    """
    if not levels:
        return []
    by_number = [{r.number: r for r in lvl.records} for lvl in levels]
    chains = []
    for r in levels[0].finished:
        chain = [r]
        for k, lvl in enumerate(levels[:-1]):
            nxt = lvl.promoted_to.get(chain[-1].number)
            if nxt is None or nxt not in by_number[k + 1]:
                break
            chain.append(by_number[k + 1][nxt])
        chains.append(chain)
    return chains


def plot_rungs(study: Any) -> Any:
    """The rungs of a multi-fidelity search (``study`` holds its top rung).

    Left: validation accuracy at each rung; a line joins each promoted policy's results rung by rung
    (red: on the top rung's Pareto front; blue: reached the top rung; orange: promoted, stopped
    below), grey points are the policies that were not promoted. Right: every rung-0 result as
    accuracy against measured speedup (promoted ones blue), joined to the top-rung result each
    promoted policy reached (red diamonds), so the gain of the full budget shows per policy; green
    squares: rung-0 cuts run again at the top rung as they ran (a rung 0 with ``also_final``).

    Raises :class:`~autoprune.errors.StudyError` for a study searched without rungs.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    levels = rungs(study)
    if not levels:
        raise StudyError(f"study '{study.study_name}' was searched without rungs; there is nothing to plot by rung")
    chains = rung_chains(levels)
    on_front = {r.number for r in front(levels[-1].records)}
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55],
                        subplot_titles=["validation accuracy rung by rung", "rung 0 -> top rung (accuracy vs speedup)"])
    labels = [lvl.label for lvl in levels]
    top = len(levels) - 1
    stayed = [[c[-1] for c in chains if len(c) == k + 1 and c[-1].complete] for k in range(len(levels))]
    for k, recs in enumerate(stayed):
        if recs and k < top:
            fig.add_trace(go.Scatter(x=[k] * len(recs), y=[r.accuracy for r in recs], mode="markers",
                                     name="not promoted", legendgroup="stayed", showlegend=k == 0,
                                     marker=dict(color="#b0b0b0", size=7),
                                     hovertext=[f"{labels[k]}<br>{hover_text(r)}" for r in recs], hoverinfo="text"),
                          row=1, col=1)
    shown: set[str] = set()
    for chain in (c for c in chains if len(c) > 1):
        last = chain[-1]
        group = ("on the front" if len(chain) == len(levels) and last.number in on_front else
                 "reached the top rung" if len(chain) == len(levels) else "promoted, stopped below the top")
        color = {"on the front": "#d62728", "reached the top rung": "#1f77b4"}.get(group, "#ff7f0e")
        fig.add_trace(go.Scatter(x=list(range(len(chain))), y=[r.accuracy for r in chain], mode="lines+markers",
                                 name=group, legendgroup=group, showlegend=group not in shown,
                                 line=dict(color=color, width=1.5), marker=dict(color=color, size=7),
                                 hovertext=[f"{labels[k]}<br>{hover_text(r)}" if r.complete else
                                            f"{labels[k]}: trial {r.number} {r.label}" for k, r in enumerate(chain)],
                                 hoverinfo="text"), row=1, col=1)
        shown.add(group)
    r0 = [c[0] for c in chains if c[0].complete]
    promoted = {c[0].number for c in chains if len(c) > 1}
    for name, recs, color in (("not promoted", [r for r in r0 if r.number not in promoted], "#b0b0b0"),
                              ("rung 0, promoted", [r for r in r0 if r.number in promoted], "#1f77b4")):
        if recs:
            stayed_group = name == "not promoted"
            fig.add_trace(go.Scatter(**_xy(recs), mode="markers", name=name, marker=dict(color=color, size=8),
                                     legendgroup="stayed" if stayed_group else name,
                                     showlegend=not (stayed_group and any(stayed[:top])),
                                     hovertext=[f"{labels[0]}<br>{hover_text(r)}" for r in recs], hoverinfo="text"),
                          row=1, col=2)
    reached = [c for c in chains if len(c) == len(levels) and c[-1].complete and c[0].complete]
    for c in reached:
        fig.add_trace(go.Scatter(x=[c[0].speedup, c[-1].speedup], y=[c[0].accuracy, c[-1].accuracy], mode="lines",
                                 showlegend=False, line=dict(color="#d62728", width=1, dash="dot"), hoverinfo="skip"),
                      row=1, col=2)
    if reached:
        fig.add_trace(go.Scatter(**_xy([c[-1] for c in reached]), mode="markers", name=f"top rung ({labels[-1]})",
                                 marker=dict(color="#d62728", size=10, symbol="diamond"),
                                 hovertext=[f"{labels[-1]}<br>{hover_text(c[-1])}" for c in reached], hoverinfo="text"),
                      row=1, col=2)
    at_top = {r.number: r for r in levels[-1].records}
    finals = [at_top[b] for b in levels[0].finals.values() if b in at_top and at_top[b].complete]
    if finals:  # rung 0's cuts, run again at the top rung as they ran (also_final): timed in full there
        fig.add_trace(go.Scatter(**_xy(finals), mode="markers", name="top rung, as run at rung 0",
                                 marker=dict(color="#2ca02c", size=10, symbol="square"),
                                 hovertext=[f"{labels[-1]}, as run at rung 0<br>{hover_text(t)}" for t in finals],
                                 hoverinfo="text"), row=1, col=2)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(levels))), ticktext=labels, row=1, col=1)
    fig.update_xaxes(title_text="measured speedup (x)", row=1, col=2)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    counts = ", ".join(f"{lvl.label}: {len(lvl.finished)}" for lvl in levels)
    fig.update_layout(title=f"Rungs: policies finished per rung ({counts})", height=480,
                      legend=dict(orientation="h", y=-0.2), hoverlabel=dict(align="left"))
    return fig


__all__ = ["hover_text", "plot_criteria", "plot_front", "plot_history", "plot_importances", "plot_layer_profiles",
           "plot_rungs", "rung_chains"]
