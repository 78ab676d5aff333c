"""Benchmark: dropping whole encoder layers against pruning heads and FFN neurons, and both, at equal
measured speedup, on MiniLM-L6 / SST-2.

Method. The dense baseline is the fine-tuned MiniLM-L6 / SST-2 checkpoint of the run config, used as it is
(``model.finetuned: true``, default ``search_spaces/minilm_sst2_finetuned.yaml``). For each target speedup
(``--targets``, default 1.5x and 2x) three levers are compared:

* ``layers``: ``drop_layer_count`` layers removed whole, the count whose measured speedup is nearest the target;
* ``units``: the same fraction of heads and FFN neurons removed in every layer, the fraction interpolated
  from measured speedups of a grid of fractions to match the measured speedup of ``layers``;
* ``both``: the drop count whose speedup is nearest the square root of the target (about half of the
  speedup from each lever), plus the uniform head/FFN fraction on the remaining layers that matches the
  same speedup.

Calibration cuts copies of the dense model without training and without gradients (``l1`` criterion:
speed depends on the shapes only, and every MiniLM layer has the same shape) and times each against the
dense model (``autoprune.measure.measure_speed``: batch 32 x 64, 1 thread, interleaved, median of
``--cal-repeats``). Each chosen policy is then run by ``autoprune.trial.run_trial`` with the best available
criterion (``fisher`` where registered, else ``gradient``; it also picks which layers go), the same
retraining budget (``--steps`` at batch 32, ``--lr``, no distillation) and scored on the test split. The
reported speedup of each trained cut is the median of ``--passes`` round-robin passes over all six cuts (the
run config's ``measure``: 15 repeats each; the cut re-applied from its prune record to a copy of the dense
model, as speed depends on shapes only): on a shared machine one timing catches the load of its minute.
Calibration points, trial results and timing passes are cached in ``runs/layer_dropping/cache.json`` so an
interrupted run resumes.

The table is printed, written between markers into ``docs/results/layer_dropping.md`` and, with the
command, date and commit, into ``docs/results/layer_dropping.json``.

    .venv/bin/python benchmarks/layer_dropping.py [--steps 300] [--lr 3e-5] [--targets 1.5,2.0]
"""

from __future__ import annotations

import argparse
import bisect
import copy
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ROOT, add_results_option, command_line, git_commit, run, write_block,  # noqa: E402
                               write_results)

from autoprune.config import load_config  # noqa: E402
from autoprune.criteria import criterion_names  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.measure import evaluate_split, measure_speed  # noqa: E402
from autoprune.models import load_model, model_depth  # noqa: E402
from autoprune.policy import PruningPolicy, RetrainBudget  # noqa: E402
from autoprune.pruner import PruneRecord, apply_record, prune  # noqa: E402
from autoprune.results import TrialResult  # noqa: E402
from autoprune.train import ensure_baseline, load_task_data, load_tokenizer  # noqa: E402
from autoprune.trial import run_trial  # noqa: E402

log = logging.getLogger("benchmarks.layer_dropping")
BEGIN, END = "<!-- layer_dropping:begin -->", "<!-- layer_dropping:end -->"
LEVERS = ("layers", "units", "both")
UNIT_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)   # head/FFN fractions timed with no layer dropped
BOTH_GRID = (0.1, 0.2, 0.3, 0.4)        # ... and with layers dropped


def best_criterion(names: Sequence[str] | None = None) -> str:
    """The criterion every lever uses: ``fisher`` where registered, else ``gradient``.

    Example:
        >>> best_criterion(("random", "gradient", "l1")), best_criterion(("gradient", "fisher"))
        ('gradient', 'fisher')
    """
    names = criterion_names() if names is None else names
    return "fisher" if "fisher" in names else "gradient"


def nearest_count(speedups: dict[int, float], target: float) -> int:
    """The drop count whose measured speedup is nearest ``target`` (on a log scale: 1.2x and 1.8x are as
    far from 1.5x as the ratios say).

    Example:
        >>> nearest_count({1: 1.19, 2: 1.46, 3: 1.93}, 2.0), nearest_count({1: 1.19, 2: 1.46, 3: 1.93}, 2 ** 0.5)
        (3, 2)
    """
    if not speedups:
        raise AutopruneError("no drop count was timed; nothing to choose from")
    return min(speedups, key=lambda k: (abs(math.log(speedups[k] / target)), k))


def match_fraction(points: Sequence[tuple[float, float]], target: float) -> float:
    """The fraction whose speedup is ``target``, by linear interpolation between measured
    ``(fraction, speedup)`` points.

    Timing noise can make measured speedups non-monotone; the points are read through their running
    maximum (a larger cut is never slower), so the answer is the smallest fraction the measurements say
    reaches the target. A target below the smallest or above the largest measured speedup raises
    :class:`~autoprune.errors.AutopruneError`: time a wider grid rather than extrapolate.

    Example:
        >>> match_fraction([(0.2, 1.2), (0.4, 1.6), (0.6, 2.2)], 1.5)
        0.35
        >>> match_fraction([(0.2, 1.25), (0.4, 1.2), (0.6, 1.75)], 1.5)   # 0.4 timed slower than 0.2: noise
        0.5
    """
    pts = sorted(points)
    if len(pts) < 2:
        raise AutopruneError(f"need at least two timed fractions to interpolate, got {len(pts)}")
    xs = [p[0] for p in pts]
    ys: list[float] = []
    for _, s in pts:
        ys.append(max(s, ys[-1]) if ys else s)
    if not ys[0] <= target <= ys[-1]:
        raise AutopruneError(f"target speedup {target:.3f}x lies outside the timed range {ys[0]:.3f}x-{ys[-1]:.3f}x "
                             f"(fractions {xs[0]}-{xs[-1]}); widen the calibration grid")
    i = bisect.bisect_left(ys, target)
    if ys[i] == target or i == 0:
        return round(xs[i], 4)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return round(x0 + (x1 - x0) * (target - y0) / (y1 - y0), 4)


def make_policy(criterion: str, depth: int, drop: int, fraction: float, budget: RetrainBudget) -> PruningPolicy:
    """``drop`` layers chosen by ``criterion``, then ``fraction`` of the heads and FFN neurons of every
    remaining layer, retrained by ``budget`` (no distillation)."""
    return PruningPolicy.uniform(criterion, depth, heads=fraction, ffn=fraction).model_copy(
        update={"drop_layer_count": drop, "retrain": budget})


class Cache:
    """Calibration points and trial results kept in one JSON file, written after every new entry."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict[str, Any]] = {"calibration": {}, "trials": {}, "retime": {}, "one_layer": {}}
        if path.is_file():
            self.data.update(json.loads(path.read_text(encoding="utf-8")))

    def get(self, kind: str, key: str) -> Any:
        return self.data[kind].get(key)

    def put(self, kind: str, key: str, value: Any) -> Any:
        self.data[kind][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        tmp.replace(self.path)
        return value


class Calibrator:
    """Times cuts of the dense model (no training) and caches the speedups."""

    def __init__(self, dense: torch.nn.Module, depth: int, cache: Cache, repeats: int, measure: Any):
        self.dense, self.depth, self.cache, self.repeats, self.m = dense, depth, cache, repeats, measure

    def speedup(self, drop: int, fraction: float) -> float:
        key = f"drop={drop} fraction={fraction:.4f} repeats={self.repeats}"
        hit = self.cache.get("calibration", key)
        if hit is not None:
            return float(hit["speedup"])
        model = copy.deepcopy(self.dense)
        pol = PruningPolicy.uniform("l1", self.depth, heads=fraction, ffn=fraction).model_copy(
            update={"drop_layer_count": drop})
        prune(model, pol)
        rep = measure_speed(self.dense, model, batch_size=self.m.batch_size, seq_len=self.m.seq_len,
                            threads=self.m.threads, warmup=self.m.warmup, repeats=self.repeats, batch1=False)
        log.info("calibration %s: %.3fx (dense %.1f ms, cut %.1f ms)", key, rep.speedup, rep.dense_ms, rep.pruned_ms)
        self.cache.put("calibration", key, {"drop": drop, "fraction": fraction, "speedup": rep.speedup,
                                            "dense_ms": rep.dense_ms, "pruned_ms": rep.pruned_ms,
                                            "repeats": self.repeats})
        return rep.speedup

    def fraction_for(self, drop: int, target: float, grid: Sequence[float]) -> tuple[float, list[tuple[float, float]]]:
        """The head/FFN fraction that, with ``drop`` layers dropped, matches ``target``; and the timed points."""
        pts = [(0.0, self.speedup(drop, 0.0) if drop else 1.0)] + [(f, self.speedup(drop, f)) for f in grid]
        return match_fraction(pts, target), pts


def plan(cal: Calibrator, targets: Sequence[float]) -> list[dict[str, Any]]:
    """For every target: the three levers' (drop count, fraction), matched on calibrated speedups."""
    drops: dict[int, float] = {}
    for k in range(1, cal.depth):  # drop counts up to the first one clearly past the largest target
        drops[k] = cal.speedup(k, 0.0)
        if drops[k] > max(targets) * 1.15:
            break
    out = []
    for t in targets:
        a = nearest_count(drops, t)
        matched = drops[a]  # units and both aim at the speedup dropping layers actually gave
        b, b_pts = cal.fraction_for(0, matched, UNIT_GRID)
        c_drop = nearest_count({k: v for k, v in drops.items() if k < a}, math.sqrt(t)) if a > 1 else None
        if c_drop is None:
            raise AutopruneError(f"target {t}x is reached by dropping one layer; 'both' needs a target that drops "
                                 f"two or more")
        c, c_pts = cal.fraction_for(c_drop, matched, BOTH_GRID)
        out.append({"target": t, "matched_speedup": matched, "drop_speedups": drops,
                    "levers": {"layers": (a, 0.0), "units": (0, b), "both": (c_drop, c)},
                    "calibration": {"units": b_pts, "both": c_pts}})
        log.info("target %.2fx: layers drop %d (%.3fx); units fraction %.3f; both drop %d + fraction %.3f",
                 t, a, matched, b, c_drop, c)
    return out


def retime(dense: torch.nn.Module, records: dict[str, dict[str, Any]], cache: Cache, passes: int,
           measure: Any) -> dict[str, list[float]]:
    """Each trial's speedup timed again in ``passes`` round-robin passes over all of them (key -> speedups).

    Speed depends on the shapes only, so each cut is re-applied to a copy of the dense model from its
    prune record (no retrained weights needed); one trial's own timing catches whatever load the shared
    machine had in that minute, the passes spread it over all of them.
    """
    models = {k: apply_record(copy.deepcopy(dense), PruneRecord.from_dict(r)) for k, r in records.items()}
    out: dict[str, list[float]] = {k: [] for k in records}
    for p in range(passes):
        for key, model in models.items():
            ck = f"{key} pass={p} repeats={measure.repeats}"
            hit = cache.get("retime", ck)
            if hit is None:
                rep = measure_speed(dense, model, batch_size=measure.batch_size, seq_len=measure.seq_len,
                                    threads=measure.threads, warmup=measure.warmup, repeats=measure.repeats,
                                    batch1=False)
                hit = cache.put("retime", ck, rep.speedup)
            out[key].append(float(hit))
    return out


def one_layer_drops(dense: torch.nn.Module, depth: int, cfg: Any, cache: Cache) -> dict[str, float]:
    """Validation accuracy of the dense model and of it with each single layer dropped, no retraining
    (``"dense"``, ``"0"``, ``"1"``, ...): how much each layer matters before the retraining repairs it."""
    if len(cache.data["one_layer"]) == depth + 1:
        return cache.data["one_layer"]
    task = load_task_data(cfg, load_tokenizer(cfg))

    def acc(model: torch.nn.Module) -> float:
        return evaluate_split(model, task.validation, batch_size=cfg.eval_batch_size, pad_id=task.pad_token_id,
                              num_labels=task.num_labels).accuracy

    cache.put("one_layer", "dense", acc(dense))
    for k in range(depth):
        model = copy.deepcopy(dense)
        prune(model, PruningPolicy.uniform("l1", depth).model_copy(update={"drop_layers": [k]}))
        cache.put("one_layer", str(k), acc(model))
    return cache.data["one_layer"]


def trial_row(res: Any, lever: str, target: float, drop: int, fraction: float,
              passes: list[float]) -> dict[str, Any]:
    rec = res.prune_record or {}
    return {"target": target, "lever": lever, "drop_layer_count": drop, "fraction": fraction,
            "dropped_layers": rec.get("dropped_layers", []), "heads_per_layer": res.heads_per_layer,
            "ffn_per_layer": res.ffn_per_layer, "speedup": statistics.median(passes), "speedup_passes": passes,
            "speedup_in_trial": res.speedup, "speedup_b1": res.speedup_b1,
            "latency_ms": res.latency_ms, "dense_latency_ms": res.dense_latency_ms,
            "flops_reduction": res.flops_reduction, "params": res.params, "dense_params": res.dense_params,
            "accuracy_pruned": res.accuracy_pruned, "accuracy": res.accuracy, "macro_f1": res.macro_f1,
            "dense_accuracy": res.dense_accuracy, "eval_n": res.eval_n, "retrain_steps": res.retrain_steps,
            "seconds": res.phase_seconds.get("total"), "policy": res.policy}


def verdict(rows: list[dict[str, Any]]) -> str:
    """Which lever is most accurate at one target, and whether its lead over each other lever exceeds two
    standard errors of a difference of two accuracies on ``eval_n`` sentences (unpaired: conservative for
    the same sentences).

    Example:
        >>> verdict([{"lever": "layers", "accuracy": 0.80, "eval_n": 872},
        ...          {"lever": "units", "accuracy": 0.85, "eval_n": 872},
        ...          {"lever": "both", "accuracy": 0.84, "eval_n": 872}])
        'units (0.8500): 1.00 points ahead of both (within 2 SE = 3.5), 5.00 ahead of layers (beyond 2 SE = 3.6)'
    """
    ranked = sorted(rows, key=lambda r: -r["accuracy"])
    best = ranked[0]
    gaps = []
    for r in ranked[1:]:
        se = math.sqrt(sum(x["accuracy"] * (1 - x["accuracy"]) / x["eval_n"] for x in (best, r)))
        gap = best["accuracy"] - r["accuracy"]
        gaps.append(f"{100 * gap:.2f}{' points' if not gaps else ''} ahead of {r['lever']} "
                    f"({'beyond' if gap > 2 * se else 'within'} 2 SE = {200 * se:.1f})")
    text = f"{best['lever']} ({best['accuracy']:.4f}): " + ", ".join(gaps)
    if all("speedup" in r for r in rows):
        text += "; speedups " + ", ".join(f"{r['lever']} {r['speedup']:.2f}x" for r in rows)
    return text


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [BEGIN, "### Layer dropping against head/FFN pruning at equal speedup (generated)", "",
             f"Dense: {meta['model']} as fine-tuned, test accuracy {meta['dense_accuracy']:.4f} "
             f"(n={meta['test_n']}). Criterion `{meta['criterion']}`; retraining {meta['steps']} steps, batch "
             f"{meta['batch_size']}, lr {meta['lr']:g}, warmup {meta['warmup_ratio']:g}, no distillation, seed "
             f"{meta['seed']}. Speedup: median latency ratio against dense at batch 32 x 64, 1 thread, interleaved, "
             f"{meta['repeats']} repeats, median (range) of {meta['passes']} round-robin passes over the six cuts "
             f"(b1: batch 1 x 64, timed once in the trial). Fractions matched on calibration timings "
             f"({meta['cal_repeats']} repeats, no training). `{meta['command']}`, {meta['date']}, {meta['commit']}.",
             "", "| target | lever | cut | layers kept | heads/layer | FFN/layer | speedup b32x64 (range) | b1 | FLOPs red. "
             "| test acc, no retraining | test acc | drop (pts) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cut = []
        if r["drop_layer_count"]:
            cut.append(f"drop {r['drop_layer_count']} ({','.join(map(str, r['dropped_layers']))})")
        if r["fraction"]:
            cut.append(f"{100 * r['fraction']:.1f}% heads+FFN")
        kept = len(r["heads_per_layer"])
        b1 = f"{r['speedup_b1']:.2f}x" if r["speedup_b1"] else "-"
        lines.append(f"| {r['target']:g}x | {r['lever']} | {' + '.join(cut)} | {kept} | "
                     f"{'/'.join(map(str, sorted(set(r['heads_per_layer']))))} | "
                     f"{'/'.join(map(str, sorted(set(r['ffn_per_layer']))))} | {r['speedup']:.2f}x "
                     f"({min(r['speedup_passes']):.2f}-{max(r['speedup_passes']):.2f}) | {b1} | "
                     f"{r['flops_reduction']:.2f}x | {r['accuracy_pruned']:.4f} | **{r['accuracy']:.4f}** | "
                     f"{100 * (r['dense_accuracy'] - r['accuracy']):.2f} |")
    lines.append("")
    for t in meta["targets"]:
        lines.append(f"- at {t:g}x the most accurate after retraining: "
                     f"{verdict([r for r in rows if r['target'] == t])}.")
    one = meta["one_layer"]
    lines.append(f"- validation accuracy with one layer dropped, no retraining (dense {one['dense']:.4f}): "
                 + ", ".join(f"layer {k} {v:.4f}" for k, v in one.items() if k != "dense")
                 + f"; `{meta['criterion']}` drops " + "; ".join(
                     f"{r['dropped_layers']} at {r['target']:g}x" for r in rows if r["lever"] == "layers") + ".")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_finetuned.yaml"))
    ap.add_argument("--targets", default="1.5,2.0", help="target speedups, comma-separated")
    ap.add_argument("--steps", type=int, default=300, help="retraining steps of every lever")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cal-repeats", type=int, default=15, help="timing repeats of each calibration cut")
    ap.add_argument("--passes", type=int, default=3, help="round-robin timing passes over the trained cuts")
    ap.add_argument("--cache", type=Path, default=Path("runs") / "layer_dropping" / "cache.json")
    ap.add_argument("--calibrate-only", action="store_true", help="time the cuts, print the plan, train nothing")
    ap.add_argument("--md", type=Path, default=ROOT / "docs" / "results" / "layer_dropping.md")
    add_results_option(ap, "layer_dropping")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        targets = [float(x) for x in args.targets.split(",") if x.strip()]
    except ValueError:
        raise AutopruneError(f"--targets {args.targets!r}: expected comma-separated speedups, e.g. 1.5,2.0") from None
    torch.set_num_threads(1)
    cfg = load_config(args.config).model_copy(update={"torch_threads": 1})
    dense = load_model(str(ensure_baseline(cfg, progress=False))).eval()
    depth = model_depth(cfg)
    cache = Cache(args.cache)
    cal = Calibrator(dense, depth, cache, args.cal_repeats, cfg.measure)
    plans = plan(cal, targets)
    if args.calibrate_only:
        print(json.dumps(plans, indent=1))
        return
    criterion = best_criterion()
    budget = RetrainBudget(steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size)
    done = []
    for p in plans:
        for lever in LEVERS:
            drop, frac = p["levers"][lever]
            pol = make_policy(criterion, depth, drop, frac, budget).model_copy(update={"seed": args.seed})
            key = pol.to_json()
            hit = cache.get("trials", key)
            if hit is None:
                log.info("trial %s at %.2fx: %s", lever, p["target"], pol.summary())
                res = run_trial(cfg, pol, final_split="test")
                hit = cache.put("trials", key, res.to_dict())
            res = TrialResult.from_dict(hit)
            done.append((key, res, lever, p["target"], drop, frac))
            log.info("%s at %.2fx: test %.4f (%.4f before retraining), %.2fx in the trial, %.0f s", lever,
                     p["target"], res.accuracy, res.accuracy_pruned, res.speedup, res.phase_seconds.get("total", 0))
    speeds = retime(dense, {key: res.prune_record for key, res, *_ in done}, cache, args.passes, cfg.measure)
    rows = [trial_row(res, lever, t, drop, frac, speeds[key]) for key, res, lever, t, drop, frac in done]
    one = one_layer_drops(dense, depth, cfg, cache)
    meta = {"model": cfg.model.name_or_path, "dense_accuracy": rows[0]["dense_accuracy"], "test_n": rows[0]["eval_n"],
            "criterion": criterion, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "warmup_ratio": budget.warmup_ratio, "seed": args.seed, "repeats": cfg.measure.repeats,
            "passes": args.passes, "one_layer": one, "cal_repeats": args.cal_repeats, "targets": targets, "command": command_line(),
            "date": time.strftime("%Y-%m-%d"), "commit": git_commit()}
    text = report(rows, meta)
    print("\n" + text)
    write_results(args, "layer_dropping", {**meta, "plans": plans, "rows": rows,
                                           "torch": torch.__version__})
    if args.md.is_file():  # after the JSON, which records whether the checkout had uncommitted changes
        write_block(args.md, text, BEGIN, END)
    else:
        args.md.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    run(main, log)
