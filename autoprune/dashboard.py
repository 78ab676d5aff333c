"""The results dashboard: one self-contained, offline Plotly HTML page built from a study.

The page reads only what :mod:`autoprune._study` defines (metric values, the dense baseline,
the accuracy floor, each trial's policy and result) and shows

* the Pareto front of validation accuracy vs measured speedup (every completed trial is a point,
  the front is highlighted and joined by a line, the dense baseline and the accuracy floor drawn),
* the per-layer sparsity profiles of the front's trials side by side,
* the front of each pruning criterion separately,
* progress over the trial number (trials by state, best accuracy at >= 1.5x and >= 2x speedup),
* Optuna's parameter importances for each objective (from 5 completed trials on),
* a table of the front's trials with the ``autoprune export`` command of each.

plotly.js is embedded once in the page (no CDN), so the file opens without a network. Storage
URLs are shown with their password masked.

Example (a study with no trials yet still renders):
    >>> import optuna
    >>> study = optuna.create_study(directions=["maximize", "maximize"], study_name="demo")
    >>> html = build_dashboard(study)
    >>> html.startswith("<!DOCTYPE html>") and "no completed trials yet" in html
    True
    >>> mask_url("postgresql://me:secret@db:5432/autoprune")
    'postgresql://me:***@db:5432/autoprune'
"""

from __future__ import annotations

import html as _html
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from autoprune import _study as S
from autoprune.errors import StudyError
from autoprune.search._storage import mask_url

logger = logging.getLogger(__name__)

CRITERIA = ("random", "gradient", "l1", "l2")
_CRITERION_COLORS = {"random": "#7f7f7f", "gradient": "#d62728", "l1": "#1f77b4", "l2": "#2ca02c"}
_STATE_COLORS = {"COMPLETE": "#2ca02c", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#1f77b4",
                 "WAITING": "#9467bd", "DUPLICATE SKIPPED": "#7f7f7f", "RE-ENQUEUED": "#8c564b"}
SPEEDUP_MARKS = (1.5, 2.0)
MIN_TRIALS_FOR_IMPORTANCE = 5

# ----------------------------------------------------------------------------- study access
def _space_defaults(space_path: Path) -> tuple[str, str, Path]:
    """Default (storage URL, study name, run dir) for a search space file, by the search's convention:
    ``sqlite:///<run_dir>/<stem>.db`` and study name ``<stem>``."""
    run_dir: Path | None = None
    try:
        from autoprune.search import load_search_space  # type: ignore[attr-defined]
    except ImportError:
        load_search_space = None
    if load_search_space is not None:
        sp = load_search_space(space_path)  # its errors are AutopruneErrors with the file named
        run_dir = Path(sp.run_config().run_dir)
    else:
        from autoprune._yaml import read_yaml_mapping
        from autoprune.errors import ConfigError

        raw = read_yaml_mapping(space_path, ConfigError)
        conf = raw.get("config")
        if isinstance(conf, dict) and isinstance(conf.get("run_dir"), str):
            run_dir = Path(conf["run_dir"])
        elif isinstance(conf, str):
            from autoprune.config import load_config

            cfg_path = Path(conf)
            if not cfg_path.is_absolute():
                cfg_path = space_path.resolve().parent / cfg_path
            run_dir = Path(load_config(cfg_path).run_dir)
        else:
            run_dir = Path("runs")
    run_dir = run_dir.resolve()
    stem = space_path.stem
    return f"sqlite:///{run_dir / (stem + '.db')}", stem, run_dir


def locate_study(space: str | Path | None = None, study_name: str | None = None,
                 storage: str | None = None) -> tuple[Any, str, Path | None]:
    """Open an existing study for the dashboard/export commands: ``(study, storage_url, run_dir)``.

    With a search space file the defaults follow the search's convention: storage
    ``sqlite:///<run_dir>/<stem>.db`` and study name ``<stem>``. A missing database or an
    unknown study name raises :class:`StudyError` listing the studies that are there.
    """
    run_dir: Path | None = None
    if space is not None:
        d_storage, d_name, run_dir = _space_defaults(Path(space))
        storage = storage or d_storage
        study_name = study_name or d_name
    if storage is None:
        raise StudyError("no study storage given; pass --storage URL (e.g. sqlite:///runs/space.db) "
                         "or -c SPACE.yaml")
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///"):])
        if not db.is_file():
            raise StudyError(f"study database {db} does not exist; run 'autoprune search' first "
                             f"or pass the right --storage")
        if run_dir is None:
            run_dir = db.parent
    from autoprune.search import open_study

    return open_study(storage, study_name), storage, run_dir


def default_output(study_name: str, run_dir: Path | None) -> Path:
    """``<run_dir>/<study>_dashboard.html``, or ``dashboard.html`` in the current directory."""
    if run_dir is not None:
        return Path(run_dir) / f"{study_name}_dashboard.html"
    return Path("dashboard.html")


# ----------------------------------------------------------------------------- data extraction
def _f(x: Any, fmt: str = ".4f") -> str:
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


class _Point:
    """A completed trial flattened for plotting."""

    def __init__(self, trial: Any):
        self.number: int = trial.number
        self.accuracy: float = float(trial.values[0])
        self.speedup: float = float(trial.values[1])
        self.policy: dict[str, Any] = dict(trial.user_attrs.get(S.T_POLICY) or {})
        self.result: dict[str, Any] = dict(trial.user_attrs.get(S.T_RESULT) or {})
        self.summary: str = trial.user_attrs.get(S.T_SUMMARY) or ""
        self.criterion: str = str(self.policy.get("criterion", "?"))
        self.granularity: str = str(self.policy.get("granularity", "structured"))
        self.complete_time = trial.datetime_complete

    @property
    def retrain_steps(self) -> Any:
        if "retrain_steps" in self.result:
            return self.result["retrain_steps"]
        return (self.policy.get("retrain") or {}).get("steps")

    def hover(self) -> str:
        r, p = self.result, self.policy
        lines = [f"<b>trial {self.number}</b>", f"criterion: {self.criterion}", f"granularity: {self.granularity}"]
        if self.granularity == "unstructured":
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
        lines.append(f"retraining steps: {self.retrain_steps}" + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"accuracy: {_f(self.accuracy)}"
                     + (f" (drop {100 * r['accuracy_drop']:.2f} pts)" if r.get("accuracy_drop") is not None else ""))
        lines.append(f"macro-F1: {_f(r.get('macro_f1'))}")
        label = r.get("speed_label", "measured")
        lines.append(f"speedup: {_f(self.speedup, '.2f')}x" + ("" if label == "measured" else f" ({label})"))
        lines.append(f"FLOPs reduction: {_f(r.get('flops_reduction'), '.2f')}x")
        if r.get("params") is not None:
            lines.append(f"params: {r['params']:,}" + (f" of {r['dense_params']:,}" if r.get("dense_params") else ""))
        return "<br>".join(lines)


def _front(points: list[_Point]) -> list[_Point]:
    """The 2-D Pareto front (both maximised), sorted by speedup."""
    pts = sorted(points, key=lambda p: (-p.speedup, -p.accuracy))
    out: list[_Point] = []
    best_acc = -math.inf
    for p in pts:
        if p.accuracy > best_acc:
            out.append(p)
            best_acc = p.accuracy
    return sorted(out, key=lambda p: p.speedup)


def _dense_accuracy(study: Any, points: list[_Point]) -> float | None:
    dense = study.user_attrs.get(S.ATTR_DENSE) or {}
    for k in ("accuracy", "validation_accuracy"):
        if isinstance(dense.get(k), (int, float)):
            return float(dense[k])
    for p in points:
        if isinstance(p.result.get("dense_accuracy"), (int, float)):
            return float(p.result["dense_accuracy"])
    return None


def export_command(study_name: str, number: int, storage: str | None = None) -> str:
    """The ``autoprune export`` command line for one trial (storage password masked).

    Example:
        >>> export_command("sst2", 7)
        'autoprune export --study sst2 --trial 7 -o exports/sst2-trial7'
    """
    st = f" --storage '{mask_url(storage)}'" if storage else ""
    return f"autoprune export --study {study_name}{st} --trial {number} -o exports/{study_name}-trial{number}"


# ----------------------------------------------------------------------------- figures
def _pareto_figure(study: Any, points: list[_Point], front: list[_Point], dense_acc: float | None,
                   floor: float | None) -> Any:
    import plotly.graph_objects as go

    by_number = {p.number: p for p in points}
    fig = None
    try:  # Optuna's own Pareto plot as the base: x = speedup, y = accuracy
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_pareto_front(
                study, targets=lambda t: (t.values[1], t.values[0]), target_names=["speedup", "accuracy"])
        for tr in fig.data:
            texts = list(tr.text or [])
            new = []
            for t in texts:
                try:
                    num = json.loads(t.replace("<br>", "\n"))["number"]
                    new.append(by_number[num].hover() if num in by_number else f"trial {num}")
                except (ValueError, KeyError, TypeError):
                    new.append(t)
            is_best = "Best" in (tr.hovertemplate or "")
            tr.update(text=new, hovertemplate="%{text}<extra></extra>", showlegend=True,
                      name="Pareto front" if is_best else "dominated trial")
            tr.marker.update(color="#d62728" if is_best else "#b0b0b0", colorscale=None, showscale=False,
                             size=10 if is_best else 8, line=dict(width=0))
    except Exception as exc:  # pragma: no cover - depends on Optuna internals
        logger.info("optuna.visualization.plot_pareto_front unavailable (%s); plotting directly", exc)
        fig = None
    if fig is None:
        fig = go.Figure()
        dominated = [p for p in points if p not in front]
        fig.add_trace(go.Scatter(x=[p.speedup for p in dominated], y=[p.accuracy for p in dominated],
                                 mode="markers", name="dominated trial", marker=dict(color="#b0b0b0", size=8),
                                 text=[p.hover() for p in dominated], hovertemplate="%{text}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[p.speedup for p in front], y=[p.accuracy for p in front], mode="markers",
                                 name="Pareto front", marker=dict(color="#d62728", size=11),
                                 text=[p.hover() for p in front], hovertemplate="%{text}<extra></extra>"))
    if front:
        fig.add_trace(go.Scatter(x=[p.speedup for p in front], y=[p.accuracy for p in front],
                                 mode="lines+markers+text", name="front (joined)",
                                 line=dict(color="#d62728", width=2, shape="linear"),
                                 marker=dict(color="#d62728", size=13, symbol="circle-open", line=dict(width=2)),
                                 text=[f"#{p.number}" for p in front], textposition="top center",
                                 hovertext=[p.hover() for p in front], hoverinfo="text"))
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


def _profiles_figure(front: list[_Point]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    unstructured = any(p.granularity == "unstructured" for p in front)
    titles = ["attention heads removed per layer", "FFN neurons removed per layer"]
    if unstructured:
        titles.append("weights zeroed per layer (unstructured)")
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, shared_yaxes=True)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
    for k, p in enumerate(front):
        color = palette[k % len(palette)]
        name = f"#{p.number} ({p.speedup:.2f}x, {p.accuracy:.3f})"
        series = [("head_sparsity", "heads_per_layer"), ("ffn_sparsity", "ffn_per_layer")]
        if unstructured:
            series.append(("weight_sparsity", None))
        for col, (key, kept_key) in enumerate(series, start=1):
            vals = p.policy.get(key)
            if not vals:
                continue
            kept = p.result.get(kept_key) if kept_key else None
            hover = [f"trial {p.number}, layer {i}: {v:.2f} removed" + (f" ({kept[i]} kept)" if kept and i < len(kept) else "")
                     for i, v in enumerate(vals)]
            fig.add_trace(go.Scatter(x=list(range(len(vals))), y=vals, mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1 or (col == 3 and not p.policy.get("head_sparsity")),
                                     line=dict(color=color), hovertext=hover, hoverinfo="text"), row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.0], title_text="fraction removed", row=1, col=1)
    fig.update_xaxes(title_text="encoder layer", dtick=1)
    fig.update_layout(title="Per-layer sparsity of the Pareto-front trials", height=430)
    return fig


def _criteria_figure(points: list[_Point], dense_acc: float | None) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for crit in list(CRITERIA) + sorted({p.criterion for p in points} - set(CRITERIA)):
        pts = [p for p in points if p.criterion == crit]
        if not pts:
            continue
        color = _CRITERION_COLORS.get(crit, "#17becf")
        fr = _front(pts)
        others = [p for p in pts if p not in fr]
        fig.add_trace(go.Scatter(x=[p.speedup for p in others], y=[p.accuracy for p in others], mode="markers",
                                 name=f"{crit} (dominated)", legendgroup=crit, showlegend=False,
                                 marker=dict(color=color, size=6, opacity=0.35),
                                 hovertext=[p.hover() for p in others], hoverinfo="text"))
        fig.add_trace(go.Scatter(x=[p.speedup for p in fr], y=[p.accuracy for p in fr], mode="lines+markers",
                                 name=f"{crit} front ({len(pts)} trials)", legendgroup=crit,
                                 line=dict(color=color, width=2), marker=dict(color=color, size=10),
                                 hovertext=[p.hover() for p in fr], hoverinfo="text"))
    if dense_acc is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[dense_acc], mode="markers", name="dense baseline",
                                 marker=dict(symbol="star", size=16, color="black"),
                                 hovertext=[f"dense baseline: accuracy {dense_acc:.4f}"], hoverinfo="text"))
    fig.update_layout(title="Pareto front of each criterion", xaxis_title="measured speedup (x)",
                      yaxis_title="validation accuracy", height=480, hoverlabel=dict(align="left"))
    return fig


def _progress_figure(study: Any) -> Any:
    import optuna
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["trials by state (cumulative)",
                                                        "best accuracy at a minimum speedup"])
    numbers = [t.number for t in trials]
    labels = [S.state_label(t) for t in trials]
    for state in ("complete", "pruned", "fail", "running", "waiting", *S.BOOKKEEPING_LABELS):
        counts, c = [], 0
        for lab in labels:
            c += lab == state
            counts.append(c)
        if c:
            fig.add_trace(go.Scatter(x=numbers, y=counts, mode="lines", name=state,
                                     line=dict(color=_STATE_COLORS.get(state.upper()), shape="hv",
                                               dash="dot" if state in S.BOOKKEEPING_LABELS else "solid")),
                          row=1, col=1)
    reached_none: list[str] = []
    for mark, dash in zip(SPEEDUP_MARKS, ("solid", "dot")):
        best, xs, ys = None, [], []
        for t in trials:
            if t.state == optuna.trial.TrialState.COMPLETE and t.values and t.values[1] >= mark:
                best = t.values[0] if best is None else max(best, t.values[0])
            xs.append(t.number)
            ys.append(best)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"best accuracy at >= {mark:g}x",
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


def _importance_figures(study: Any, n_complete: int) -> tuple[list[Any], str | None]:
    if n_complete < MIN_TRIALS_FOR_IMPORTANCE:
        return [], (f"Parameter importances appear from {MIN_TRIALS_FOR_IMPORTANCE} completed trials on "
                    f"({n_complete} so far).")
    import optuna

    figs = []
    notes = []
    for i, name in enumerate(S.METRIC_NAMES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, target=lambda t, i=i: t.values[i])
            if not imp:
                notes.append(f"no parameters to rank for {name}")
                continue
            import plotly.graph_objects as go

            items = sorted(imp.items(), key=lambda kv: kv[1])
            fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                                   marker_color="#1f77b4" if i == 0 else "#2ca02c",
                                   hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
            fig.update_layout(title=f"Parameter importance for {name} (optuna.importance)",
                              xaxis_title="importance (normalised)", height=max(280, 140 + 34 * len(items)))
            fig.update_yaxes(automargin=True, tickmode="array", tickvals=[k for k, _ in items])
            figs.append(fig)
        except Exception as exc:  # too few distinct values, a single parameter, ...
            notes.append(f"importance for {name} not available: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return figs, ("; ".join(notes) if notes else None)


# ----------------------------------------------------------------------------- page
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 24px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px} h2{font-size:18px;margin:28px 0 6px}
.meta{color:#555;font-size:13px} .note{color:#7a5200;background:#fff6e0;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;font-size:13px;margin-top:8px} th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td.l{text-align:left} code{font-size:12px;background:#f6f6f6;padding:1px 4px}
"""


def _fig_html(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _front_table(front: list[_Point], study_name: str, storage: str | None) -> str:
    rows = []
    for p in sorted(front, key=lambda p: -p.speedup):
        r = p.result
        drop = f"{100 * r['accuracy_drop']:.2f}" if r.get("accuracy_drop") is not None else "-"
        params = f"{r['params']:,}" if isinstance(r.get("params"), int) else "-"
        rows.append(
            f"<tr><td>{p.number}</td><td>{p.accuracy:.4f}</td><td>{drop}</td><td>{_f(r.get('macro_f1'))}</td>"
            f"<td>{p.speedup:.2f}x</td><td>{_f(r.get('flops_reduction'), '.2f')}x</td><td>{params}</td>"
            f"<td class=l>{_html.escape(p.summary or p.criterion)}</td>"
            f"<td class=l><code>{_html.escape(export_command(study_name, p.number, storage))}</code></td></tr>")
    head = ("<tr><th>trial</th><th>accuracy</th><th>drop (pts)</th><th>macro-F1</th><th>speedup</th>"
            "<th>FLOPs red.</th><th>params</th><th>policy</th><th>export</th></tr>")
    return f"<table id='front-table'>{head}{''.join(rows)}</table>"


def build_dashboard(study: Any, *, storage: str | None = None, refresh_seconds: int | None = None) -> str:
    """Build the dashboard of ``study`` as one self-contained HTML page (plotly.js embedded once).

    ``storage`` (shown masked, and used in the export commands) is the URL the study was opened
    from; ``refresh_seconds`` adds a ``<meta http-equiv="refresh">`` for a live page.

    Example:
        >>> import optuna
        >>> s = optuna.create_study(directions=["maximize", "maximize"])
        >>> s.add_trial(optuna.trial.create_trial(values=[0.9, 1.5]))
        >>> "Pareto front" in build_dashboard(s)
        True
    """
    import optuna
    from plotly.offline import get_plotlyjs

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    points = [_Point(t) for t in complete if t.values is not None and len(t.values) >= 2]
    try:
        front_numbers = S.pareto_numbers(study)
    except Exception:
        front_numbers = {p.number for p in _front(points)}
    front = sorted([p for p in points if p.number in front_numbers], key=lambda p: p.speedup)
    dense_acc = _dense_accuracy(study, points)
    floor = study.user_attrs.get(S.ATTR_FLOOR)
    floor = float(floor) if isinstance(floor, (int, float)) else None
    all_trials = study.get_trials(deepcopy=False)
    by_state: dict[str, int] = {}
    for t in all_trials:
        label = S.state_label(t)
        by_state[label] = by_state.get(label, 0) + 1
    name = study.study_name

    sections: list[str] = []
    if not points:
        sections.append("<p class=note>no completed trials yet; the page fills in as the search runs.</p>")
    else:
        sections.append("<h2>Pareto front</h2>" + _fig_html(_pareto_figure(study, points, front, dense_acc, floor),
                                                            "pareto"))
        sections.append("<h2>Pareto-front trials</h2>" + _front_table(front, name, storage))
        sections.append("<h2>Per-layer sparsity profiles</h2>" + _fig_html(_profiles_figure(front), "profiles"))
        sections.append("<h2>Fronts by criterion</h2>" + _fig_html(_criteria_figure(points, dense_acc), "criteria"))
    if all_trials:
        sections.append("<h2>Progress</h2>" + _fig_html(_progress_figure(study), "progress"))
    figs, note = _importance_figures(study, len(points))
    imp_html = "<h2>Parameter importances</h2>"
    if figs:
        imp_html += "".join(_fig_html(f, f"importance-{i}") for i, f in enumerate(figs))
    if note:
        imp_html += f"<p class=note>{_html.escape(note)}</p>"
    sections.append(imp_html)

    cfg = study.user_attrs.get(S.ATTR_CONFIG) or {}
    model_name = (cfg.get("model") or {}).get("name_or_path", "?") if isinstance(cfg, dict) else "?"
    meta = [f"study <b>{_html.escape(name)}</b>"]
    if storage:
        meta.append(f"storage <code>{_html.escape(mask_url(storage))}</code>")
    meta.append(f"model <code>{_html.escape(str(model_name))}</code>")
    meta.append("trials: " + (", ".join(f"{v} {k}" for k, v in sorted(by_state.items())) or "none"))
    if dense_acc is not None:
        meta.append(f"dense accuracy {dense_acc:.4f}")
    if floor is not None:
        meta.append(f"accuracy floor {floor:.4f}")
    meta.append(f"{len(front)} trial(s) on the front")
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    body = (f"<h1>autoprune: {_html.escape(name)}</h1><div class=meta>{' &middot; '.join(meta)}</div>"
            + "".join(sections)
            + "<p class=meta>Hover a point for its policy and metrics. The study also opens in "
              "<code>optuna-dashboard</code> (metric names are set).</p>")
    body = mask_url(body)  # no password anywhere in the generated part of the page
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"{refresh}<title>autoprune dashboard: {_html.escape(name)}</title><style>{_CSS}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f"<body>{body}</body></html>\n")


def write_dashboard(study: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`build_dashboard` to ``path`` (parents created) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(build_dashboard(study, **kwargs), encoding="utf-8")
    logger.info("dashboard written to %s", p)
    return p


# ----------------------------------------------------------------------------- live server
def make_server(load_study: Callable[[], Any], *, host: str = "127.0.0.1", port: int = 8765,
                storage: str | None = None, refresh_seconds: int = 10) -> Any:
    """An HTTP server (not yet serving) that rebuilds the page from a fresh study on every request.

    ``load_study`` is called per request so a running search shows up; the page also reloads
    itself every ``refresh_seconds``. It binds ``127.0.0.1`` unless another ``host`` is given.
    Run it with ``server.serve_forever()``; ``server.server_address`` gives the bound address.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404, "only / is served")
                return
            try:
                page = build_dashboard(load_study(), storage=storage, refresh_seconds=refresh_seconds)
                data, code = page.encode("utf-8"), 200
            except Exception as exc:
                logger.warning("dashboard rebuild failed: %s", exc)
                data = mask_url(f"<html><body><h1>dashboard unavailable</h1><pre>{_html.escape(str(exc))}</pre>"
                                "</body></html>").encode("utf-8")
                code = 500
            self.send_response(code)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug("dashboard server: " + fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_dashboard(load_study: Callable[[], Any], *, host: str = "127.0.0.1", port: int = 8765,
                    storage: str | None = None, refresh_seconds: int = 10) -> None:
    """Serve the live dashboard until interrupted (see :func:`make_server`)."""
    server = make_server(load_study, host=host, port=port, storage=storage, refresh_seconds=refresh_seconds)
    h, p = server.server_address[:2]
    logger.warning("serving the dashboard on http://%s:%s/ (Ctrl-C stops)", h, p)
    try:
        server.serve_forever()
    finally:
        server.server_close()
