"""What the benchmarks share: where their results go, how they are written, and how a study is scored.

Every benchmark prints its numbers as markdown tables and writes them as JSON to
``docs/results/<benchmark>.json`` (``--results PATH`` writes elsewhere), one section per kind of run,
each with the command that produced it::

    {"benchmark": "surgery",
     "sections": {"speed": {"command": ".venv/bin/python benchmarks/surgery.py --repeats 15",
                            "date": "2026-12-01 14:03", "commit": "06ecd1e", "results": [...]}, ...}}

Writing a section replaces that section and keeps the others.

Studies are read through :mod:`autoprune.study` only; a front is scored by the hypervolume of
(validation accuracy, speedup) above :func:`autoprune.study.reference_point` of the dense model.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout: import this checkout's autoprune
    sys.path.insert(0, str(ROOT))

from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.study import counted_trials, dense_accuracy, hypervolume, reference_point  # noqa: E402

RESULTS_DIR = ROOT / "docs" / "results"


def add_results_option(ap: argparse.ArgumentParser, benchmark: str) -> None:
    """``--results PATH``: where the JSON goes (default ``docs/results/<benchmark>.json``)."""
    ap.set_defaults(benchmark=benchmark)
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / f"{benchmark}.json",
                    help=f"JSON results file (default: docs/results/{benchmark}.json)")


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a reader would type it from the repository root.

    Example:
        >>> command_line([str(ROOT / "benchmarks" / "surgery.py"), "--repeats", "15"])
        '.venv/bin/python benchmarks/surgery.py --repeats 15'
    """
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        argv[0] = str(script.relative_to(ROOT))
    except ValueError:
        argv[0] = str(script)
    return shlex.join([".venv/bin/python", *argv])


def git_commit() -> str | None:
    """The short commit of the checkout the benchmark runs from, ``-dirty`` appended when tracked files
    have uncommitted changes (None outside a git checkout)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except OSError:
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def write_results(args: argparse.Namespace, section: str, results: Any) -> Path:
    """Write ``results`` (JSON-able) as ``section`` of ``args.results``, with the command, date and
    commit; the file's other sections are kept. Returns the path."""
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"benchmark": args.benchmark, "sections": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old.get("sections"), dict):
                doc["sections"] = old["sections"]
        except (ValueError, AttributeError):
            logging.getLogger("benchmarks").warning("%s is not a results file; replacing it", path)
    doc["sections"][section] = {"command": command_line(), "date": time.strftime("%Y-%m-%d %H:%M"),
                                "commit": git_commit(), "results": results}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    logging.getLogger("benchmarks").info("results written to %s (%s)", path, section)
    return path


def write_block(out_md: Path, text: str, begin: str, end: str) -> str:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) in place of the block between
    those markers in ``out_md``, or append it when the file has no such block; returns ``text``."""
    old = out_md.read_text() if out_md.is_file() else "# Benchmarks\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    out_md.write_text(new)
    return text


def parse_ints(text: str, flag: str) -> list[int]:
    """Comma-separated integers of a command-line option; one clear error otherwise.

    Example:
        >>> parse_ints("1000, 2000", "--seeds")
        [1000, 2000]
    """
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AutopruneError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1000,2000") from None


def rotated_plan(seeds: list[int], names: Sequence[str]) -> list[tuple[int, str]]:
    """(seed, name) in run order: seed by seed, the names rotated by one place per seed, so each takes
    each place in the order as often as the others (a shared machine's drifting load falls on all alike).

    >>> rotated_plan([1, 2], ["random", "tpe", "gp"])
    [(1, 'random'), (1, 'tpe'), (1, 'gp'), (2, 'tpe'), (2, 'gp'), (2, 'random')]
    """
    names = list(names)
    out = []
    for i, seed in enumerate(seeds):
        k = i % len(names)
        out += [(seed, n) for n in names[k:] + names[:k]]
    return out


def study_reference(study: Any) -> tuple[float, float]:
    """The hypervolume reference point of a study: its dense validation accuracy minus REF_MARGIN, speedup 1.0."""
    acc = dense_accuracy(study)
    if acc is None:
        raise AutopruneError(f"study '{study.study_name}' records no dense accuracy; it was not written by a search")
    return reference_point(acc)


def hypervolume_first(study: Any, n: int, reference: tuple[float, float]) -> float:
    """Hypervolume of the study's first ``n`` trials that count towards ``n_trials``: how a study that ran
    further is compared with another at the same trial count."""
    return hypervolume(counted_trials(study, first=n), reference)


def torch_ao_int8(model: Any) -> Any:
    """``torch.ao`` dynamic int8 of every Linear (per-channel weights), a copy: the int8 trials used before
    it was dropped for ONNX Runtime's; benchmarks time it as a reference point, the product never runs it."""
    import copy

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear: per_channel_dynamic_qconfig},
                            dtype=torch.qint8)


def run(main: Callable[[], None], log: logging.Logger) -> None:
    """Run a benchmark's ``main``: Ctrl-C keeps what finished (exit 130), bad input is one line (exit 2)."""
    try:
        main()
    except KeyboardInterrupt:
        log.warning("interrupted: finished trials are in the study storage; re-run the same command to continue")
        sys.exit(130)
    except AutopruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
