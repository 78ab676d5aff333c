"""The ``autoprune`` command line: a thin layer over the library API.

Every command turns an error that comes from what the user typed (an
:class:`~autoprune.errors.AutopruneError`, or an ``OSError`` about a named path) into one line on
stderr and exit status 2 (``--debug`` shows the traceback instead); output paths and ports are
checked before any work.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Search pruning policies of BERT-family text models for the accuracy/speed trade-off.")
console = Console(stderr=True)
out = Console()
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show full tracebacks"),
          verbose: bool = typer.Option(False, "-v", "--verbose", help="log at INFO level")) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING)
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("datasets", "transformers", "filelock", "urllib3", "ray"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    logging.getLogger("autoprune").setLevel(logging.INFO if (verbose or debug) else logging.WARNING)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; an error that comes from what the user typed becomes one line and exit code 2.

    That is an :class:`~autoprune.errors.AutopruneError`, or an ``OSError`` about a named path (a
    folder that is a file, a read-only place, no permission). ``--debug`` re-raises with the traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from autoprune.errors import AutopruneError

        try:
            return fn(*args, **kwargs)
        except AutopruneError as exc:
            if _state["debug"]:
                raise
            _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if _state["debug"] or exc.filename is None:
                raise
            _error_line(f"{exc.filename}: {exc.strerror or exc}; check the path and that you may write there")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _error_line(message: str) -> None:
    from rich.markup import escape

    # escape: a message such as "give one [low, high] per layer" must not be read as markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def check_output(path: Optional[Path], flag: str, *, folder: bool) -> None:
    """Refuse an output path of the wrong kind, or in a place that cannot be written, before any work.

    ``folder``: the command writes a folder there (else a file).
    """
    from autoprune.errors import ConfigError

    if path is None:
        return
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is a file; give a folder (new, empty, or an earlier export)")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file path, e.g. {path / 'dashboard.html'}")
    above = path.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise ConfigError(f"{flag} {path}: {above} is a file, not a folder; give a path in a folder")
    import tempfile

    try:  # a probe, not os.access: root passes permission checks and still cannot write everywhere
        with tempfile.TemporaryFile(dir=above):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {above} ({exc.strerror or exc}); give a path you can "
                          f"write") from None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ----------------------------------------------------------------------------- core commands
@app.command()
@handle_errors
def baseline(config: Path = typer.Option(..., "-c", "--config", help="run configuration YAML"),
             json_out: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Fine-tune the dense baseline once and cache it under the run directory."""
    from autoprune.config import load_config
    from autoprune.train import baseline_metrics, ensure_baseline

    cfg = load_config(config)
    path = ensure_baseline(cfg)
    metrics = baseline_metrics(cfg, path)
    if json_out:
        _print_json({"baseline_dir": str(path), **metrics})
        return
    t = Table(title=f"dense baseline: {path}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("validation_accuracy", "validation_macro_f1", "test_accuracy", "test_macro_f1", "steps", "train_seconds"):
        if metrics.get(k) is not None:
            v = metrics[k]
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(t)


@app.command()
@handle_errors
def prune(config: Path = typer.Option(..., "-c", "--config", help="run configuration YAML"),
          policy: Path = typer.Option(..., "--policy", "-p", help="pruning policy YAML or JSON"),
          split: str = typer.Option("validation", "--split",
                                    help="split of the reported accuracies: validation or test"),
          json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
          save: Optional[Path] = typer.Option(None, "--save", help="also save the pruned model here")) -> None:
    """Apply one pruning policy end to end: prune, retrain, evaluate, measure against dense.

    The accuracy right after pruning (before any retraining) is reported beside the final one.
    """
    from autoprune.config import load_config
    from autoprune.errors import ConfigError
    from autoprune.models import model_depth
    from autoprune.policy import PruningPolicy
    from autoprune.trial import SPLITS, run_trial

    check_output(save, "--save", folder=True)
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    cfg = load_config(config)
    pol = PruningPolicy.load(policy)
    pol.check_layers(model_depth(cfg), source=str(policy))  # name the policy file in a layer-count error
    res = run_trial(cfg, pol, save_dir=str(save) if save else None, final_split=split)
    if json_out:
        _print_json(res.to_dict())
        return
    out.print(result_table(res.to_dict(), title=f"policy {policy}: {pol.summary()}"))


def result_table(r: dict[str, Any], title: str = "") -> Table:
    t = Table(title=title)
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
    if r.get("accuracy_pruned") is not None:
        t.add_row(f"accuracy right after pruning ({r['eval_split']})", "", f"{r['accuracy_pruned']:.4f}")
    t.add_row(f"accuracy ({r['eval_split']}, n={r['eval_n']})", f"{r['dense_accuracy']:.4f}", f"{r['accuracy']:.4f}")
    t.add_row("macro-F1", f"{r['dense_macro_f1']:.4f}", f"{r['macro_f1']:.4f}")
    m = r.get("measure", {})
    t.add_row(f"latency ms (batch {m.get('batch_size')} x {m.get('seq_len')}, median)",
              f"{r['dense_latency_ms']:.2f}", f"{r['latency_ms']:.2f}")
    if r.get("latency_b1_ms") is not None:
        t.add_row("latency ms (batch 1, median)", f"{r['dense_latency_b1_ms']:.2f}", f"{r['latency_b1_ms']:.2f}")
    t.add_row("encoder GFLOPs", f"{r['dense_flops'] / 1e9:.2f}", f"{r['flops'] / 1e9:.2f}")
    t.add_row("parameters", f"{r['dense_params']:,}", f"{r['params']:,}")
    t.add_row("size on disk MB", f"{r['dense_size_bytes'] / 1e6:.1f}", f"{r['size_bytes'] / 1e6:.1f}")
    t.add_row("heads per layer", "", str(r["heads_per_layer"]))
    t.add_row("FFN neurons per layer", "", str(r["ffn_per_layer"]))
    label = "" if r["speed_label"] == "measured" else f" ({r['speed_label']})"
    t.add_row("accuracy drop (points)", "", f"{100 * r['accuracy_drop']:.2f}")
    t.add_row("speedup" + label, "", f"{r['speedup']:.2f}x")
    if r.get("speed_flags"):
        t.add_row("speedup flagged", "", "; ".join(r["speed_flags"]))
    t.add_row("FLOPs reduction", "", f"{r['flops_reduction']:.2f}x")
    return t


# ----------------------------------------------------------------------------- search commands
def _search_common(space: Path, study: Optional[str], storage: Optional[str], address: Optional[str],
                   n_trials: Optional[int], resume_only: bool, heartbeat: float, timeout: Optional[float]) -> None:
    import shlex

    from autoprune.search import default_storage, load_search_space, mask_url, run_search, study_status

    sp = load_search_space(space)
    st = run_search(sp, study_name=study, storage=storage, address=address, n_trials=n_trials,
                    progress=True, resume_only=resume_only, heartbeat_s=heartbeat, timeout_s=timeout)
    rows = [r for r in study_status(st.study_name, st._storage) if r["on_front"]]
    out.print(_status_table(sorted(rows, key=lambda r: -(r["speedup"] or 0)),
                            title=f"Pareto front of '{st.study_name}' ({len(rows)} trials)"))
    url = storage or default_storage(sp.run_config().run_dir, st.study_name)
    again = ["autoprune", "status", "-c", str(space)]  # the options that located the study, as given
    if study is not None:
        again += ["--study", study]
    if storage is not None:
        again += ["--storage", mask_url(storage)]
    console.print(f"study '{st.study_name}' in {mask_url(url)}; see all trials with: "
                  f"{' '.join(shlex.quote(a) for a in again)}", highlight=False, soft_wrap=True)


def _status_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    """The trials as a table; rows with a ``rung`` (a multi-fidelity search) get a rung column, and a
    promotion column when one of them was promoted."""
    rungs = any(r.get("rung") is not None for r in rows)
    t = Table(title=title)
    cols = [("#", "right"), ("policy", "left"), ("accuracy", "right"), ("speedup", "right"), ("state", "left"),
            ("front", "center")]
    promoted = any(r.get("promoted_to") is not None or r.get("final_as") is not None for r in rows)
    if rungs:
        cols[1:1] = [("rung", "right")]
    if promoted:
        cols += [("promoted to", "right")]
    for col, just in cols + [("note", "left")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        cells = [str(r["number"]), r["policy_summary"] or "",
                 "" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                 "" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                 r["state"] + ("" if r.get("counted", True) or r["state"] in ("RUNNING", "WAITING") else " (not counted)"),
                 "*" if r["on_front"] else ""]
        if rungs:
            cells[1:1] = ["" if r.get("rung") is None else str(r["rung"])]
        if promoted:
            went = [] if r.get("promoted_to") is None else [f"rung {r['rung'] + 1} #{r['promoted_to']}"]
            went += [] if r.get("final_as") is None else [f"top, as run, #{r['final_as']}"]
            cells.append("; ".join(went))
        t.add_row(*cells, (r.get("reason") or "; ".join(r.get("speed_flags") or []))[:80])
    return t


_SPACE_OPT = typer.Option(..., "-c", "--config", help="search space YAML")
_STUDY_OPT = typer.Option(None, "--study", help="study name: letters, digits, '.', '_', '-' (default: the space file's stem)")
_STORAGE_OPT = typer.Option(None, "--storage", help="Optuna storage URL (default: sqlite:///<run_dir>/<study>.db)")
_ADDRESS_OPT = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)")
_NTRIALS_OPT = typer.Option(None, "--n-trials", help="total trials the study should reach (default: the space's)")
_HEARTBEAT_OPT = typer.Option(60.0, "--heartbeat", metavar="SECONDS",
                              help="when stderr is not a terminal: a progress line every SECONDS (and one per trial)")
_TIMEOUT_OPT = typer.Option(None, "--timeout", metavar="SECONDS",
                            help="wall-time budget of this run: no new trial starts after SECONDS, trials in flight "
                                 "finish (default: the space's timeout_s, else none)")


@app.command()
@handle_errors
def search(space: Path = _SPACE_OPT, study: Optional[str] = _STUDY_OPT, storage: Optional[str] = _STORAGE_OPT,
           address: Optional[str] = _ADDRESS_OPT, n_trials: Optional[int] = _NTRIALS_OPT,
           heartbeat: float = _HEARTBEAT_OPT, timeout: Optional[float] = _TIMEOUT_OPT) -> None:
    """Search pruning policies (Optuna study, trials on Ray); re-running the same command resumes."""
    _search_common(space, study, storage, address, n_trials, resume_only=False, heartbeat=heartbeat, timeout=timeout)


@app.command()
@handle_errors
def resume(space: Path = _SPACE_OPT, study: Optional[str] = _STUDY_OPT, storage: Optional[str] = _STORAGE_OPT,
           address: Optional[str] = _ADDRESS_OPT, n_trials: Optional[int] = _NTRIALS_OPT,
           heartbeat: float = _HEARTBEAT_OPT, timeout: Optional[float] = _TIMEOUT_OPT) -> None:
    """Continue an existing search: finished trials are kept, interrupted ones re-run."""
    _search_common(space, study, storage, address, n_trials, resume_only=True, heartbeat=heartbeat, timeout=timeout)


def _locate(space: Optional[Path], study: Optional[str], storage: Optional[str]) -> Any:
    """Where the study of ``-c SPACE.yaml`` / ``--study`` / ``--storage`` is (autoprune.study.locate)."""
    from autoprune.errors import ConfigError
    from autoprune.study import locate

    if space is None and storage is None:
        raise ConfigError("give the search space (-c SPACE.yaml) or the storage (--storage URL) of the study")
    return locate(space, study_name=study, storage=storage)


def _status_rows(st: Any, rung: Optional[int] = None, all_rungs: bool = False) -> list[dict[str, Any]]:
    """One plain dict per trial (what ``status --json`` prints): the study's trials, or with ``rung`` /
    ``all_rungs`` those of one or every rung of a multi-fidelity search. ``on_front`` is only ever true
    for top-rung trials; ``promoted_to`` is the trial number at the next rung a lower-rung trial went on as,
    ``final_as`` the top-rung trial that ran its policy as it ran (a rung with ``also_final``), and a
    top-rung trial's ``final_of`` the ``[rung, trial]`` that policy ran at first."""
    from autoprune import _study as S
    from autoprune.errors import ConfigError
    from autoprune.study import front, rungs, trial_records

    levels = rungs(st)
    if (rung is not None or all_rungs) and not levels:
        raise ConfigError(f"study '{st.study_name}' was searched without rungs; leave out --rung / --all-rungs")
    if rung is not None and not 0 <= rung < len(levels):
        raise ConfigError(f"--rung {rung}: study '{st.study_name}' has rungs 0..{len(levels) - 1} "
                          f"({', '.join(lvl.label for lvl in levels)})")
    lower = st.user_attrs.get(S.ATTR_RUNG_OF) is not None  # opened a lower rung's study by its name: no front
    if not levels:
        picked = [(None, trial_records(st), {}, {})]
    else:
        chosen = levels if all_rungs else [levels[-1 if rung is None else rung]]
        picked = [(lvl, lvl.records, lvl.promoted_to, lvl.finals) for lvl in chosen]
    rows = []
    for lvl, records, promoted, finals in picked:
        on_front = {r.number for r in front(records)} if (lvl is None and not lower) or (lvl and lvl.top) else set()
        rows += [{"number": r.number, "rung": r.rung if lvl is None else lvl.index,
                  "study": st.study_name if lvl is None else lvl.study_name, "state": r.state, "counted": r.counted,
                  "policy_summary": r.summary, "accuracy": r.accuracy, "speedup": r.speedup,
                  "macro_f1": (r.result or {}).get("macro_f1"), "latency_ms": (r.result or {}).get("latency_ms"),
                  "on_front": r.number in on_front, "promoted_to": promoted.get(r.number),
                  "final_as": finals.get(r.number), "final_of": None if r.final_of is None else list(r.final_of),
                  "budget": r.budget,
                  "speed_flags": (r.result or {}).get("speed_flags") or [],
                  "reason": r.reason, "node_id": r.node_id, "duration_s": r.duration_s} for r in records]
    return rows


@app.command()
@handle_errors
def status(space: Optional[Path] = typer.Option(None, "-c", "--config", help="search space YAML"),
           study: Optional[str] = _STUDY_OPT, storage: Optional[str] = _STORAGE_OPT,
           rung: Optional[int] = typer.Option(None, "--rung", metavar="N",
                                              help="multi-fidelity search: the trials of rung N (0 = cheapest)"),
           all_rungs: bool = typer.Option(False, "--all-rungs", help="multi-fidelity search: the trials of every rung"),
           json_out: bool = typer.Option(False, "--json", help="print a JSON list, one object per trial")) -> None:
    """Show the trials of a study: policy, accuracy, speedup, state, and whether it is on the Pareto front.

    For a multi-fidelity search, the top rung's trials (the final results; only they are on the front);
    --rung N or --all-rungs show the lower rungs too, with the trial each promoted policy became.
    """
    st = _locate(space, study, storage).open()
    rows = _status_rows(st, rung=rung, all_rungs=all_rungs)
    if json_out:
        _print_json(rows)
        return
    what = "every rung" if all_rungs else (f"rung {rung}" if rung is not None else "")
    title = f"study '{st.study_name}'" + (f", {what}" if what else "") + f": {len(rows)} trials"
    from autoprune import _study as S

    if rows and st.user_attrs.get(S.ATTR_RUNGS) and not all_rungs and rung is None:
        title += f" (top rung {rows[0]['rung']}; --rung N or --all-rungs for the lower rungs)"
    out.print(_status_table(rows, title=title))


# ----------------------------------------------------------------------------- dashboard / export commands
_SPACE_OPT = typer.Option(None, "-c", "--config", help="search space YAML (default storage and study name)")
_STUDY_OPT = typer.Option(None, "--study", help="study name (default: the space file's stem)")
_STORAGE_OPT = typer.Option(None, "--storage", help="Optuna storage URL (default: sqlite:///<run_dir>/<stem>.db)")


@app.command()
@handle_errors
def dashboard(space: Optional[Path] = _SPACE_OPT, study: Optional[str] = _STUDY_OPT,
              storage: Optional[str] = _STORAGE_OPT,
              output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                    help="HTML file (default: <run_dir>/<study>_dashboard.html)"),
              serve: bool = typer.Option(False, "--serve", help="serve a live page that rebuilds on each request"),
              port: int = typer.Option(8765, "--port", help="port for --serve"),
              host: str = typer.Option("127.0.0.1", "--host", help="address for --serve (default: local only)"),
              refresh: int = typer.Option(10, "--refresh", help="seconds between page reloads with --serve")) -> None:
    """Write the Pareto-front dashboard of a study as one offline HTML page, or serve it live."""
    from autoprune.dashboard import default_output, make_server, write_dashboard
    from autoprune.errors import ConfigError
    from autoprune.search import mask_url

    if serve and not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a TCP port is 1-65535, or 0 for any free one; give e.g. --port 8765")
    if serve and refresh < 1:
        raise ConfigError(f"--refresh {refresh}: the page reloads every N seconds, N >= 1; give e.g. --refresh 10")
    check_output(output, "-o", folder=False)
    loc = _locate(space, study, storage)
    st = loc.open()
    if serve:
        name = st.study_name
        try:  # the study reads its storage on every call, so each request shows the trials finished since
            server = make_server(lambda: st, host=host, port=port, storage=loc.storage, refresh_seconds=refresh)
        except OSError as exc:
            from autoprune.errors import AutopruneError

            raise AutopruneError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; pick another --port") from None
        h, p = server.server_address[:2]
        console.print(f"serving study '{name}' from {mask_url(loc.storage)} on http://{h}:{p}/ (Ctrl-C stops)",
                      highlight=False)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return
    path = write_dashboard(st, output or default_output(st.study_name, loc.run_dir), storage=loc.storage)
    out.print(f"dashboard written to {path}", highlight=False)


@app.command()
@handle_errors
def export(space: Optional[Path] = _SPACE_OPT, study: Optional[str] = _STUDY_OPT,
           storage: Optional[str] = _STORAGE_OPT,
           trial: Optional[int] = typer.Option(None, "--trial", help="export this trial number"),
           max_accuracy_drop: Optional[float] = typer.Option(
               None, "--max-accuracy-drop",
               help="fastest front trial at most this many accuracy POINTS below dense (1.0 = one point)"),
           min_speedup: Optional[float] = typer.Option(None, "--min-speedup",
                                                       help="most accurate front trial at >= this speedup"),
           output: Path = typer.Option(..., "-o", "--output", help="export directory"),
           onnx: bool = typer.Option(False, "--onnx", help="also write model.onnx (checked in onnxruntime)")) -> None:
    """Export a trial of the front: policy.yaml, the pruned model (safetensors), README, optional ONNX."""
    from autoprune.export import Selector, export_trial

    check_output(output, "-o", folder=True)
    sel = Selector.parse(trial=trial, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup)
    st = _locate(space, study, storage).open()
    path = export_trial(st, sel, output, onnx=onnx)
    import yaml

    doc = yaml.safe_load((path / "policy.yaml").read_text(encoding="utf-8"))
    m = doc.get("metrics", {})
    out.print(f"exported trial {doc['trial']} ({doc['policy_summary']}) to {path}: accuracy "
              f"{m.get('accuracy', float('nan')):.4f}, speedup {m.get('speedup', float('nan')):.2f}x; "
              f"model {doc['source']['kind']}", highlight=False)


@app.command()
@handle_errors
def apply(policy: Path = typer.Argument(..., help="policy.yaml written by 'autoprune export'"),
          config: Path = typer.Option(..., "-c", "--config", help="run configuration YAML"),
          output: Optional[Path] = typer.Option(None, "-o", "--output", help="save the pruned model here"),
          json_out: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Re-apply an exported policy to a fresh base model, retrain, and compare with the stored numbers."""
    from autoprune.export import apply_policy

    check_output(output, "-o", folder=True)
    rep = apply_policy(policy, config, out_dir=output)
    if json_out:
        _print_json(rep)
        return
    r, s = rep["result"], rep["stored"]
    t = Table(title=f"apply {policy}: {rep['policy_summary']}"
                    + (" (prune record re-applied)" if rep["kept_indices"] else " (units re-scored)"))
    t.add_column("")
    t.add_column("stored", justify="right")
    t.add_column("now", justify="right")
    for key, fmt in (("accuracy_pruned", ".4f"), ("accuracy", ".4f"), ("macro_f1", ".4f"), ("dense_accuracy", ".4f"), ("speedup", ".2f"),
                     ("flops_reduction", ".2f"), ("params", ",")):
        sv, nv = s.get(key), r.get(key)
        t.add_row(key, "-" if sv is None else format(sv, fmt), "-" if nv is None else format(nv, fmt))
    out.print(t)
    if output:
        out.print(f"pruned model saved to {output}", highlight=False)


@app.command("export-onnx")
@handle_errors
def export_onnx_cmd(model_dir: Path = typer.Argument(..., help="a saved pruned model directory (prune --save, "
                                                               "apply -o, export)"),
                    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write"),
                    int8: Optional[bool] = typer.Option(
                        None, "--int8/--float", help="ONNX Runtime dynamic int8 (default: int8 when the model was "
                                                    "saved by an int8 policy, else float)")) -> None:
    """Export any saved pruned model to ONNX (checked in onnxruntime), optionally as ONNX Runtime int8."""
    from autoprune.errors import ModelError
    from autoprune.onnx_export import export_onnx
    from autoprune.runtimes import Target, check_targets
    from autoprune.serialization import load_pruned, saved_quantization

    check_targets([Target(runtime="onnxruntime")], devices=False)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; give a model directory saved by autoprune "
                         f"(prune --save DIR, apply -o DIR, or export -o DIR)")
    model = load_pruned(model_dir, as_float=True)
    if int8 is None:
        int8 = saved_quantization(model_dir) is not None
    output.parent.mkdir(parents=True, exist_ok=True)
    path = export_onnx(model, output, int8=int8)
    out.print(f"wrote {'int8' if int8 else 'float'} ONNX model {path} ({path.stat().st_size / 1e6:.1f} MB)",
              highlight=False)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
