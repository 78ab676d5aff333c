"""The results dashboard: one self-contained, offline Plotly HTML page built from a study.

The page assembles the figures of :mod:`autoprune.visualization` (the Pareto front with the dense
baseline and the accuracy floor, the per-layer sparsity profiles of the front, the front of each
criterion, progress over the trial number, Optuna's parameter importances from 5 completed
trials on) and a table of the front's trials with the ``autoprune export`` command of each. For a
multi-fidelity search the page shows the top rung (every figure above reads only it) and a section on
the rungs: a table of each rung's budget, trials and promotions, and :func:`~autoprune.visualization.plot_rungs`.

plotly.js is embedded once in the page (no CDN), so the file opens without a network. Storage
URLs are shown with their password masked.

Example (a study with no trials yet still renders):
    >>> import optuna
    >>> study = optuna.create_study(directions=["maximize", "maximize"], study_name="demo")
    >>> html = build_dashboard(study)
    >>> html.startswith("<!DOCTYPE html>") and "no completed trials yet" in html
    True
"""

from __future__ import annotations

import html as _html
import logging
from pathlib import Path
from typing import Any, Callable

from autoprune import visualization as V
from autoprune._study import METRIC_NAMES
from autoprune.errors import StudyError
from autoprune.search import mask_url
from autoprune.study import (RungInfo, TrialRecord, completed_trials, dense_accuracy, front, rungs, study_info,
                             trial_records)

logger = logging.getLogger(__name__)


def default_output(study_name: str, run_dir: Path | None) -> Path:
    """``<run_dir>/<study>_dashboard.html``, or ``dashboard.html`` in the current directory."""
    if run_dir is not None:
        return Path(run_dir) / f"{study_name}_dashboard.html"
    return Path("dashboard.html")


def export_command(study_name: str, number: int, storage: str | None = None) -> str:
    """The ``autoprune export`` command line for one trial (storage password masked).

    Example:
        >>> export_command("sst2", 7)
        'autoprune export --study sst2 --trial 7 -o exports/sst2-trial7'
    """
    st = f" --storage '{mask_url(storage)}'" if storage else ""
    return f"autoprune export --study {study_name}{st} --trial {number} -o exports/{study_name}-trial{number}"


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


def _front_table(fr: list[TrialRecord], study_name: str, storage: str | None) -> str:
    f = V.fmt_number
    rows = []
    for r in sorted(fr, key=lambda r: -(r.speedup or 0.0)):
        res = r.result or {}
        drop = f"{100 * res['accuracy_drop']:.2f}" if res.get("accuracy_drop") is not None else "-"
        params = f"{res['params']:,}" if isinstance(res.get("params"), int) else "-"
        rows.append(
            f"<tr><td>{r.number}</td><td>{r.accuracy:.4f}</td><td>{drop}</td><td>{f(res.get('macro_f1'))}</td>"
            f"<td>{r.speedup:.2f}x</td><td>{f(res.get('flops_reduction'), '.2f')}x</td><td>{params}</td>"
            f"<td class=l>{_html.escape(r.summary or r.criterion)}</td>"
            f"<td class=l><code>{_html.escape(export_command(study_name, r.number, storage))}</code></td></tr>")
    head = ("<tr><th>trial</th><th>accuracy</th><th>drop (pts)</th><th>macro-F1</th><th>speedup</th>"
            "<th>FLOPs red.</th><th>params</th><th>policy</th><th>export</th></tr>")
    return f"<table id='front-table'>{head}{''.join(rows)}</table>"


def _rung_table(levels: list[RungInfo]) -> str:
    rows = []
    for lvl in levels:
        recs = lvl.records
        n = {lab: sum(1 for r in recs if r.label == lab) for lab in ("complete", "pruned", "fail", "running", "waiting")}
        best = max((r.accuracy for r in recs if r.complete), default=None)
        promoted = "-" if lvl.top else str(len(lvl.promoted_to)) + (f" (+{len(lvl.finals)} to the top as run)"
                                                                   if lvl.finals else "")
        rows.append(f"<tr><td class=l>{_html.escape(lvl.label)}{' (top: the front above)' if lvl.top else ''}</td>"
                    f"<td class=l><code>{_html.escape(lvl.study_name)}</code></td><td>{len(lvl.finished)}</td>"
                    f"<td>{n['complete']}</td><td>{n['pruned']}</td><td>{n['fail']}</td>"
                    f"<td>{n['running'] + n['waiting']}</td><td>{promoted}</td><td>{V.fmt_number(best)}</td></tr>")
    head = ("<tr><th>rung</th><th>study</th><th>finished</th><th>complete</th><th>stopped early</th><th>failed</th>"
            "<th>running / waiting</th><th>promoted</th><th>best accuracy</th></tr>")
    return f"<table id='rung-table'>{head}{''.join(rows)}</table>"


def _rungs_section(study: Any, levels: list[RungInfo]) -> str:
    head = ("<h2>Rungs</h2><p class=meta>A multi-fidelity search: every policy is scored at rung 0, the top "
            "fraction of each rung (by non-dominated rank, then crowding distance) moves up. Only top-rung results "
            "are final: the front, the tables and the figures above hold nothing else.</p>" + _rung_table(levels))
    if not any(r.complete for r in levels[0].records):
        return head
    return head + _fig_html(V.plot_rungs(study), "rungs")


def _importances(study: Any, n_complete: int) -> str:
    head = "<h2>Parameter importances</h2>"
    if n_complete < V.MIN_TRIALS_FOR_IMPORTANCE:
        return head + (f"<p class=note>Parameter importances appear from {V.MIN_TRIALS_FOR_IMPORTANCE} completed "
                       f"trials on ({n_complete} so far).</p>")
    out, notes = [], []
    for i, objective in enumerate(METRIC_NAMES):
        try:
            out.append(_fig_html(V.plot_importances(study, objective), f"importance-{i}"))
        except StudyError as exc:
            notes.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - Optuna: too few distinct values, a single parameter, ...
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            notes.append(f"importance for {objective} not available: {first}")
    note = f"<p class=note>{_html.escape('; '.join(notes))}</p>" if notes else ""
    return head + "".join(out) + note


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
    from plotly.offline import get_plotlyjs

    from autoprune.search._rungs import check_not_lower_rung

    check_not_lower_rung(study, "see the dashboard of")  # a lower rung's "front" is not a result
    records = trial_records(study)
    points = completed_trials(records)
    fr = front(records)
    info = study_info(study)
    dense_acc, floor = dense_accuracy(study), info.accuracy_floor
    by_state: dict[str, int] = {}
    for r in records:
        by_state[r.label] = by_state.get(r.label, 0) + 1
    name = study.study_name

    sections: list[str] = []
    if not points:
        sections.append("<p class=note>no completed trials yet; the page fills in as the search runs.</p>")
    else:
        sections.append("<h2>Pareto front</h2>" + _fig_html(V.plot_front(study), "pareto"))
        sections.append("<h2>Pareto-front trials</h2>" + _front_table(fr, name, storage))
        sections.append("<h2>Per-layer sparsity profiles</h2>" + _fig_html(V.plot_layer_profiles(study), "profiles"))
        sections.append("<h2>Fronts by criterion</h2>" + _fig_html(V.plot_criteria(study), "criteria"))
    if records:
        sections.append("<h2>Progress</h2>" + _fig_html(V.plot_history(study), "progress"))
    levels = rungs(study)
    if levels:
        sections.append(_rungs_section(study, levels))
    sections.append(_importances(study, len(points)))

    model_name = (info.config.get("model") or {}).get("name_or_path", "?")
    meta = [f"study <b>{_html.escape(name)}</b>"]
    if storage:
        meta.append(f"storage <code>{_html.escape(mask_url(storage))}</code>")
    meta.append(f"model <code>{_html.escape(str(model_name))}</code>")
    meta.append("trials: " + (", ".join(f"{v} {k}" for k, v in sorted(by_state.items())) or "none"))
    if dense_acc is not None:
        meta.append(f"dense accuracy {dense_acc:.4f}")
    if floor is not None:
        meta.append(f"accuracy floor {floor:.4f}")
    if levels:
        meta.append("rungs: " + " &rarr; ".join(f"{_html.escape(lvl.label)} ({len(lvl.finished)})" for lvl in levels))
    meta.append(f"{len(fr)} trial(s) on the front")
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
