"""The ``autoprune`` command line: a thin layer over the library API.

Every command turns an :class:`~autoprune.errors.AutopruneError` into one line on stderr and
exit status 2 (``--debug`` shows the traceback instead).
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
    """Run a command; a user error becomes one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from autoprune.errors import AutopruneError

        try:
            return fn(*args, **kwargs)
        except AutopruneError as exc:
            if _state["debug"]:
                raise
            from rich.markup import escape

            # escape: a message such as "give one [low, high] per layer" must not be read as markup
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


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
          json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
          save: Optional[Path] = typer.Option(None, "--save", help="also save the pruned model here")) -> None:
    """Apply one pruning policy end to end: prune, retrain, evaluate, measure against dense."""
    from autoprune.config import load_config
    from autoprune.policy import PruningPolicy
    from autoprune.trial import run_trial

    from autoprune.models import model_depth

    cfg = load_config(config)
    pol = PruningPolicy.load(policy)
    pol.check_layers(model_depth(cfg), source=str(policy))  # name the policy file in a layer-count error
    res = run_trial(cfg, pol, save_dir=str(save) if save else None)
    if json_out:
        _print_json(res.to_dict())
        return
    out.print(result_table(res.to_dict(), title=f"policy {policy}: {pol.summary()}"))


def result_table(r: dict[str, Any], title: str = "") -> Table:
    t = Table(title=title)
    t.add_column("")
    t.add_column("dense", justify="right")
    t.add_column("pruned", justify="right")
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
    t.add_row("FLOPs reduction", "", f"{r['flops_reduction']:.2f}x")
    return t


# ----------------------------------------------------------------------------- search commands (issue 3)
def _search_common(space: Path, study: Optional[str], storage: Optional[str], address: Optional[str],
                   n_trials: Optional[int], resume_only: bool) -> None:
    from autoprune.search import default_storage, load_search_space, mask_url, run_search, study_status

    sp = load_search_space(space)
    st = run_search(sp, study_name=study, storage=storage, address=address, n_trials=n_trials,
                    progress=True, resume_only=resume_only)
    rows = [r for r in study_status(st.study_name, st._storage) if r["on_front"]]
    out.print(_status_table(sorted(rows, key=lambda r: -(r["speedup"] or 0)),
                            title=f"Pareto front of '{st.study_name}' ({len(rows)} trials)"))
    url = storage or default_storage(sp.run_config().run_dir, st.study_name)
    console.print(f"study '{st.study_name}' in {mask_url(url)}; "
                  f"see all trials with: autoprune status -c {space}", highlight=False)


def _status_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    t = Table(title=title)
    for col, just in (("#", "right"), ("policy", "left"), ("accuracy", "right"), ("speedup", "right"),
                      ("state", "left"), ("front", "center"), ("note", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(str(r["number"]), r["policy_summary"] or "",
                  "" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                  "" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                  r["state"] + ("" if r.get("counted", True) or r["state"] in ("RUNNING", "WAITING") else " (not counted)"),
                  "*" if r["on_front"] else "", (r.get("reason") or "")[:80])
    return t


_SPACE_OPT = typer.Option(..., "-c", "--config", help="search space YAML")
_STUDY_OPT = typer.Option(None, "--study", help="study name (default: the space file's stem)")
_STORAGE_OPT = typer.Option(None, "--storage", help="Optuna storage URL (default: sqlite:///<run_dir>/<study>.db)")
_ADDRESS_OPT = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)")
_NTRIALS_OPT = typer.Option(None, "--n-trials", help="total trials the study should reach (default: the space's)")


@app.command()
@handle_errors
def search(space: Path = _SPACE_OPT, study: Optional[str] = _STUDY_OPT, storage: Optional[str] = _STORAGE_OPT,
           address: Optional[str] = _ADDRESS_OPT, n_trials: Optional[int] = _NTRIALS_OPT) -> None:
    """Search pruning policies (Optuna study, trials on Ray); re-running the same command resumes."""
    _search_common(space, study, storage, address, n_trials, resume_only=False)


@app.command()
@handle_errors
def resume(space: Path = _SPACE_OPT, study: Optional[str] = _STUDY_OPT, storage: Optional[str] = _STORAGE_OPT,
           address: Optional[str] = _ADDRESS_OPT, n_trials: Optional[int] = _NTRIALS_OPT) -> None:
    """Continue an existing search: finished trials are kept, interrupted ones re-run."""
    _search_common(space, study, storage, address, n_trials, resume_only=True)


@app.command()
@handle_errors
def status(space: Optional[Path] = typer.Option(None, "-c", "--config", help="search space YAML"),
           study: Optional[str] = _STUDY_OPT, storage: Optional[str] = _STORAGE_OPT,
           json_out: bool = typer.Option(False, "--json", help="print a JSON list, one object per trial")) -> None:
    """Show the trials of a study: policy, accuracy, speedup, state, and whether it is on the Pareto front."""
    from autoprune.errors import ConfigError
    from autoprune.search import default_storage, default_study_name, load_search_space, study_status

    if space is not None:
        sp = load_search_space(space)
        study = study or default_study_name(sp)
        storage = storage or default_storage(sp.run_config().run_dir, study)
    elif storage is None:
        raise ConfigError("give the search space (-c SPACE.yaml) or the storage (--storage URL) of the study")
    rows = study_status(study, storage)
    if json_out:
        _print_json(rows)
        return
    out.print(_status_table(rows, title=f"study '{study or ''}': {len(rows)} trials"))


# ----------------------------------------------------------------------------- dashboard / export commands (issue 4)
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
    from autoprune.dashboard import default_output, locate_study, make_server, mask_url, write_dashboard

    st, url, run_dir = locate_study(space, study, storage)
    if serve:
        import optuna

        from autoprune.search._storage import get_storage

        name = st.study_name
        rdb = get_storage(url)  # postgresql:// needs the psycopg2 mapping of get_storage, not a raw URL
        try:
            server = make_server(lambda: optuna.load_study(study_name=name, storage=rdb), host=host, port=port,
                                 storage=url, refresh_seconds=refresh)
        except OSError as exc:
            from autoprune.errors import AutopruneError

            raise AutopruneError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; pick another --port") from None
        h, p = server.server_address[:2]
        console.print(f"serving study '{name}' from {mask_url(url)} on http://{h}:{p}/ (Ctrl-C stops)",
                      highlight=False)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return
    path = write_dashboard(st, output or default_output(st.study_name, run_dir), storage=url)
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
    from autoprune.dashboard import locate_study
    from autoprune.export import Selector, export_trial

    sel = Selector.parse(trial=trial, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup)
    st, _, _ = locate_study(space, study, storage)
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

    rep = apply_policy(policy, config, out_dir=output)
    if json_out:
        _print_json(rep)
        return
    r, s = rep["result"], rep["stored"]
    t = Table(title=f"apply {policy}: {rep['policy_summary']}"
                    + (" (kept indices reused)" if rep["kept_indices"] else " (units re-scored)"))
    t.add_column("")
    t.add_column("stored", justify="right")
    t.add_column("now", justify="right")
    for key, fmt in (("accuracy", ".4f"), ("macro_f1", ".4f"), ("dense_accuracy", ".4f"), ("speedup", ".2f"),
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
    from autoprune.export import export_onnx
    from autoprune.runtimes import Target, check_targets, load_float_model

    check_targets([Target(runtime="onnxruntime")], devices=False)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; give a model directory saved by autoprune "
                         f"(prune --save DIR, apply -o DIR, or export -o DIR)")
    model = load_float_model(model_dir)
    if int8 is None:
        int8 = bool((getattr(model.config, "autoprune", None) or {}).get("quantized"))
    output.parent.mkdir(parents=True, exist_ok=True)
    path = export_onnx(model, output, int8=int8)
    out.print(f"wrote {'int8' if int8 else 'float'} ONNX model {path} ({path.stat().st_size / 1e6:.1f} MB)",
              highlight=False)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
