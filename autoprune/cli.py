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
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
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
    from autoprune.train import ensure_baseline, load_baseline_metrics

    cfg = load_config(config)
    path = ensure_baseline(cfg)
    metrics = load_baseline_metrics(path)
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

    cfg = load_config(config)
    pol = PruningPolicy.load(policy)
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

# ----------------------------------------------------------------------------- dashboard / export commands (issue 4)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
