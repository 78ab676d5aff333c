"""How far a latency table's predicted speedup is from the speedup measured at the top rung.

A rung with ``speed: table`` predicts a policy's speedup from per-layer timings
(:mod:`autoprune.latency`) instead of timing it. This script builds (or reads from ``--cache``) the
tables of the reference run config's speed objective, float and int8, on this machine, and holds
their predictions against the speedups the top rungs of archived multi-fidelity studies *measured*
(the full interleaved timing every final result gets) for the same per-layer shapes:

* ``promoted``: the multi-fidelity arms' top-rung trials, i.e. the policies promoted from rung 0;
* ``all``: every top-rung trial, the random arms' too.

It reports, per group and for float and int8 apart, the median and worst relative error
``|predicted - measured| / measured`` and the median signed error. A table is only valid on the
machine it was timed on (its cache key holds the CPU model): compare it with archives timed on the
same machine (a trial that records the CPU it was timed on, ``machine`` in its result, is left out
when that CPU differs; trials stored before it was recorded are taken as given). ``--fresh`` also re-times each promoted shape now (a model cut to that shape, the
full measurement of the target, dense and cut interleaved) beside the prediction.

    .venv/bin/python benchmarks/latency_table.py --archives docs/data/multifidelity5_studies.db
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, add_results_option, write_results  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402

log = logging.getLogger("benchmarks.latency_table")
CHECKPOINT = ROOT.parent / "shared" / "models" / "minilm-l6-sst2"
CONFIG = ROOT / "search_spaces" / "minilm_sst2_finetuned.yaml"


def measured_trials(archives: list[Path], target: dict[str, Any]) -> list[dict[str, Any]]:
    """Every COMPLETE top-rung trial of ``archives`` whose speed objective was timed in ``target``
    (same runtime, device, threads and shape): its shape, int8 flag, measured speedup and source."""
    import optuna

    keys = ("runtime", "device", "threads", "batch_size", "seq_len")
    rows = []
    for p in archives:
        if not p.is_file():
            raise AutopruneError(f"{p}: no such study file; give docs/data/multifidelity*_studies.db files")
        url = f"sqlite:///{p}"
        for name in optuna.get_all_study_names(url):
            if ".rung" in name or not name.startswith(("mf_", "random_")):
                continue
            for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False):
                r = t.user_attrs.get("result")
                if t.state.name != "COMPLETE" or not r or not r.get("targets"):
                    continue
                o = r["targets"]["targets"].get(r["targets"]["objective"], {})
                if any(o.get(k) != target[k] for k in keys):
                    continue
                rows.append({"source": [p.name, name, t.number], "promoted": name.startswith("mf_"),
                             "cpu": (r.get("machine") or {}).get("cpu"),
                             "int8": bool(r["policy"].get("quantize")), "heads": r["heads_per_layer"],
                             "ffn": r["ffn_per_layer"], "measured": o["speedup"],
                             "measured_quartiles": [o.get("speedup_q1"), o.get("speedup_q3")]})
    return rows


def errors(rows: list[dict[str, Any]], key: str = "measured") -> dict[str, Any]:
    """Median / worst relative error and median signed error of ``predicted`` against ``key``.

    Example:
        >>> errors([{"predicted": 1.1, "measured": 1.0}, {"predicted": 1.8, "measured": 2.0}])
        {'n': 2, 'median': 0.1, 'worst': 0.1, 'median_signed': 0.0}
    """
    if not rows:
        return {"n": 0}
    signed = [(r["predicted"] - r[key]) / r[key] for r in rows]
    return {"n": len(rows), "median": round(statistics.median(abs(e) for e in signed), 6),
            "worst": round(max(abs(e) for e in signed), 6), "median_signed": round(statistics.median(signed), 6)}


def grouped(rows: list[dict[str, Any]], key: str = "measured") -> dict[str, Any]:
    """:func:`errors` for the promoted trials and for all, each in all / float / int8."""
    out = {}
    for group, sel in (("promoted", [r for r in rows if r["promoted"]]), ("all", rows)):
        out[group] = {"all": errors(sel, key), "float": errors([r for r in sel if not r["int8"]], key),
                      "int8": errors([r for r in sel if r["int8"]], key)}
    return out


def _fresh(dense: Any, target: Any, rows: list[dict[str, Any]]) -> None:
    """Time each row's shape now (first heads and neurons kept: speed depends on the shape only)."""
    import copy

    from autoprune.runtimes import measure_target
    from autoprune.surgery import prune_structured

    for i, r in enumerate(rows):
        model = prune_structured(copy.deepcopy(dense), kept_heads=[list(range(h)) for h in r["heads"]],
                                 kept_neurons=[list(range(n)) for n in r["ffn"]])
        r["fresh"] = measure_target(dense, model, target.model_copy(update={"batch1": False}),
                                    int8=r["int8"])["speedup"]
        log.info("%d/%d %s: predicted %.3fx, measured then %.3fx, now %.3fx", i + 1, len(rows), r["source"],
                 r["predicted"], r["measured"], r["fresh"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archives", type=Path, nargs="+", default=[ROOT / "docs" / "data" / "multifidelity5_studies.db"],
                    help="study files whose top-rung timings the tables are held against (default: the fifth "
                         "protocol run's, timed on the machine this was first run on)")
    ap.add_argument("--config", type=Path, default=CONFIG, help="run config: its speed objective's target")
    ap.add_argument("--model", type=Path, default=CHECKPOINT, help="the dense model (its shape is what counts)")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "cache" / "latency",
                    help="latency table cache (the search's: <run_dir>/cache/latency)")
    ap.add_argument("--fresh", action="store_true", help="also re-time every promoted shape now")
    ap.add_argument("--tables", type=Path, nargs="*", default=[],
                    help="more table files (JSON, as the cache writes them) to hold against the same timings, "
                         "e.g. earlier builds on the same machine: how much a build's noise moves the error")
    add_results_option(ap, "latency_table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("autoprune.runtimes", "autoprune.onnx_export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from autoprune.config import load_config
    from autoprune.latency import LatencyTable, latency_table
    from autoprune.models import load_model

    try:
        target = load_config(args.config).measure.objective_target()
        rows = measured_trials(args.archives, target.model_dump())
        if not args.model.is_dir():
            raise AutopruneError(f"{args.model}: no model directory; pass --model (the shape is what counts)")
    except AutopruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dense = load_model(str(args.model), num_labels=2).eval()
    tables = {q: latency_table(dense, target, int8=q, cache_dir=args.cache, progress=True)
              for q in sorted({r["int8"] for r in rows})}
    elsewhere = [r for r in rows if r["cpu"] not in (None, tables[r["int8"]].machine.get("cpu"))]
    if elsewhere:  # a trial that records the CPU it was timed on is held only against a table of that CPU
        log.info("%d trials were timed on another CPU; left out", len(elsewhere))
        rows = [r for r in rows if r not in elsewhere]
    for r in rows:
        r["predicted"] = tables[r["int8"]].predict(r["heads"], r["ffn"])
    if args.fresh:
        _fresh(dense, target, [r for r in rows if r["promoted"]])
    others = []
    for path in args.tables:
        other = LatencyTable.from_dict(json.loads(path.read_text()))
        sel = [dict(r, predicted=other.predict(r["heads"], r["ffn"])) for r in rows if r["int8"] == other.int8]
        others.append({"file": path.name, "int8": other.int8, "created": other.created,
                       "errors": grouped(sel)})
    results = {"target": target.model_dump(), "archives": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT)
                                                             else str(p) for p in args.archives],
               "tables": {("int8" if q else "float"): {k: v for k, v in t.to_dict().items()}
                          for q, t in tables.items()},
               "against_top_rung": grouped(rows),
               "against_fresh": grouped([r for r in rows if "fresh" in r], "fresh") if args.fresh else None,
               "other_builds": others,
               "trials": rows}
    print(f"# latency tables of {target.describe()} (grids {tables[next(iter(tables))].head_grid} heads, "
          f"{tables[next(iter(tables))].neuron_grid} FFN neurons); build seconds "
          + ", ".join(f"{'int8' if q else 'float'} {t.seconds:.0f}" for q, t in tables.items()))
    print(f"# predicted speedup against the top rung's measured speedup, {len(rows)} trials of "
          f"{', '.join(p.name for p in args.archives)}; relative error")
    print("| trials | kind | n | median | worst | median signed |\n|---|---|---|---|---|---|")
    for name, by in (("vs top rung", results["against_top_rung"]), ("vs fresh timing", results["against_fresh"])):
        for group, kinds in (by or {}).items():
            for kind, e in kinds.items():
                if e["n"]:
                    print(f"| {group} ({name}) | {kind} | {e['n']} | {e['median']:.1%} | {e['worst']:.1%} | "
                          f"{e['median_signed']:+.1%} |")
    for o in others:
        e = o["errors"]["promoted"]["int8" if o["int8"] else "float"]
        if e["n"]:
            print(f"| promoted, build {o['file']} ({o['created']}) | {'int8' if o['int8'] else 'float'} | {e['n']} | "
                  f"{e['median']:.1%} | {e['worst']:.1%} | {e['median_signed']:+.1%} |")
    write_results(args, "tables", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
