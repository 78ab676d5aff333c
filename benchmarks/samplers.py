#!/usr/bin/env python
"""Optuna samplers against random search, scored by the hypervolume of their accuracy/speedup fronts.

A real replication on the reference space (``benchmarks/minilm_sst2.py --phases replicate``) costs about
2 h 20 min per seed pair on a 2-core CPU, too much to try a sampler at many seeds. Two cheaper ways:

``real``: each sampler on a space whose trials take seconds (default ``search_spaces/quickstart.yaml``:
real MiniLM-L6 trials on a 4,000-row SST-2 subset, scored on 300 validation rows), through the real
driver, Ray workers and early stop, at several sampler seeds:

* every sampler gets the same ``--n-trials`` per seed and the same ``--startup`` random trials (TPE and
  GP; default a third of the trials, as the reference space's 10 of 28);
* seeds run one after another, the samplers of a seed back to back in an order rotated per seed, so
  that load on a shared machine drifts over all samplers alike;
* resumable: all studies live in ``<run_dir>/bench_samplers_real.db`` (named ``<sampler>_seed<N>``).

``surrogate``: a nearest-neighbour surrogate fitted to every stopped or completed trial of the reference
space's studies in the reference benchmark's database (search and random search, all sampler seeds);
each candidate sampler runs ``--seeds`` simulated studies of ``--n-trials`` against it. A sampled
policy is built by the space's own ``sample_policy`` (two trials in flight and duplicates skipped, as
in the real search), matched to the observed trials of the same granularity, int8 and QAT setting
(these decide the speedup) by distance over per-layer sparsities, retraining steps, learning rate,
iterative steps (log scales over the observed values), distillation weight and criterion; its ``k``
nearest neighbours (distance-weighted) decide whether it is stopped and, if not, its accuracy and
speedup. It interpolates a few hundred noisy observations, so a sampler that looks better here is a
candidate for a real replication, not a result; its fidelity (each sampler seed's studies predicted
from the other seeds' trials) is logged first.

Score: hypervolume of (validation accuracy, speedup) above the reference point (dense validation accuracy
minus 5 points, speedup 1.0), the measure of the reference benchmark. The tables are printed and
written to ``docs/results/samplers.json`` (sections ``real`` and ``surrogate``).

    .venv/bin/python benchmarks/samplers.py real [--seeds 1,2,3,4,5,6] [--n-trials 18]
        [--samplers random,tpe,gp] [-c search_spaces/quickstart.yaml]
    .venv/bin/python benchmarks/samplers.py surrogate [--seeds 200] [--n-trials 28] [--k 5] [--with-gp]
        [--storage sqlite:///docs/data/minilm_sst2_studies.db]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ROOT, add_results_option, hypervolume_first, parse_ints, rotated_plan, run,  # noqa: E402
                               study_reference, write_results)

from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.search import load_search_space, make_sampler, policy_key, run_search  # noqa: E402
from autoprune.study import REF_MARGIN, hypervolume, load_study, study_info, trial_records  # noqa: E402

log = logging.getLogger("benchmarks.samplers")
SAMPLERS = ("random", "tpe", "gp", "nsga2")


def summarise(hv: dict[str, dict[int, float]], baseline: str = "random") -> list[str]:
    """Markdown rows: per sampler, mean / median hypervolume over the seeds every sampler finished,
    the ratio of its mean to ``baseline``'s mean and the seeds where it beat ``baseline``.

    >>> print("\\n".join(summarise({"random": {1: 0.1, 2: 0.2}, "gp": {1: 0.2, 2: 0.1}})))
    | sampler | seeds | mean hypervolume | median | mean / random's mean | seeds above random |
    |---|---:|---:|---:|---:|---:|
    | random | 2 | 0.15000 | 0.15000 | 1.00x | - |
    | gp | 2 | 0.15000 | 0.15000 | 1.00x | 1/2 |
    """
    seeds = sorted(set.intersection(*(set(v) for v in hv.values()))) if hv else []
    rows = ["| sampler | seeds | mean hypervolume | median | mean / random's mean | seeds above random |",
            "|---|---:|---:|---:|---:|---:|"]
    if not seeds or baseline not in hv:
        return rows
    base = statistics.mean(hv[baseline][s] for s in seeds)
    for name, per in hv.items():
        vals = [per[s] for s in seeds]
        ratio = f"{statistics.mean(vals) / base:.2f}x" if base > 0 else "-"
        wins = "-" if name == baseline else f"{sum(per[s] > hv[baseline][s] for s in seeds)}/{len(seeds)}"
        rows.append(f"| {name} | {len(seeds)} | {statistics.mean(vals):.5f} | {statistics.median(vals):.5f} | "
                    f"{ratio} | {wins} |")
    return rows


# ----------------------------------------------------------------------------- real trials
def run_real(args: argparse.Namespace) -> None:
    seeds = parse_ints(args.seeds, "--seeds")
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if not seeds or not samplers or set(samplers) - set(SAMPLERS) or "random" not in samplers:
        raise AutopruneError(f"--samplers {args.samplers!r} / --seeds {args.seeds!r}: give at least one seed and "
                             f"samplers from {', '.join(SAMPLERS)}, random search included (the ratios are to it)")
    if args.n_trials < 2:
        raise AutopruneError("--n-trials must be at least 2")
    startup = args.startup if args.startup is not None else max(1, args.n_trials // 3)
    space = load_search_space(args.space)
    run_dir = Path(space.run_config().run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{run_dir / 'bench_samplers_real.db'}"

    wall: dict[str, float] = {s: 0.0 for s in samplers}
    for seed, sampler in rotated_plan(seeds, samplers):
        sp = space.model_copy(update={"sampler": sampler, "seed": seed, "startup_trials": startup})
        t = time.perf_counter()
        log.info("seed %d: %s", seed, sampler)
        run_search(sp, study_name=f"{sampler}_seed{seed}", storage=storage, n_trials=args.n_trials, progress=False)
        wall[sampler] += time.perf_counter() - t

    hv: dict[str, dict[int, float]] = {s: {} for s in samplers}
    ref = None
    lines = []
    for seed in seeds:
        row = []
        for sampler in samplers:
            study = load_study(storage=storage, study_name=f"{sampler}_seed{seed}")
            if ref is None:
                ref = study_reference(study)
            hv[sampler][seed] = hypervolume_first(study, args.n_trials, ref)
            row.append(f"{hv[sampler][seed]:.5f}")
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    assert ref is not None
    print(f"\nsamplers real on {args.space}: {args.n_trials} trials per study, {startup} startup trials "
          f"(TPE, GP), seeds {','.join(map(str, seeds))}; storage {storage}")
    print(f"reference point: dense validation accuracy - {REF_MARGIN} = {ref[0]:.4f}, speedup 1.0; wall time of the "
          "studies run by this invocation: " + ", ".join(f"{s} {wall[s] / 60:.1f} min" for s in samplers) + "\n")
    print("| seed | " + " | ".join(samplers) + " |")
    print("|---:|" + "---:|" * len(samplers))
    print("\n".join(lines) + "\n")
    print("\n".join(summarise(hv)))
    write_results(args, "real", {"space": args.space, "n_trials": args.n_trials, "startup_trials": startup,
                                 "reference_point": list(ref), "hypervolume": hv,
                                 "wall_minutes": {s: w / 60 for s, w in wall.items()}})


# ----------------------------------------------------------------------------- surrogate
Row = tuple[dict[str, Any], dict[str, Any] | None]  # (policy dict, result dict or None if stopped)


def _log_unit(x: float, lo: float, hi: float) -> float:
    """``x`` on a log scale from ``lo`` (0) to ``hi`` (1); 0 when only one value was observed."""
    return math.log(x / lo) / math.log(hi / lo) if hi > lo else 0.0


class Surrogate:
    """k-nearest-neighbour model of (stopped?, accuracy, speedup) over observed trials.

    Distances are taken within the group of granularity, int8 and QAT (they decide the speedup), over
    per-layer sparsities, then retraining steps, learning rate and iterative steps on log scales spanning
    the observed values, distillation weight and criterion."""

    def __init__(self, rows: list[Row], k: int = 5) -> None:
        self.k = k
        policies = [p for p, _ in rows]
        self.spans = {key: (min(v), max(v)) for key, v in (
            ("steps", [p["retrain"]["steps"] for p in policies]),
            ("learning_rate", [p["retrain"]["learning_rate"] for p in policies]),
            ("iterative_steps", [p.get("iterative_steps", 1) for p in policies]))}
        self.criteria = sorted({p["criterion"] for p in policies})
        self.by_group: dict[tuple[Any, ...], list[tuple[list[float], dict[str, Any] | None]]] = {}
        for policy, result in rows:
            g, x = self.features(policy)
            self.by_group.setdefault(g, []).append((x, result))

    def features(self, policy: dict[str, Any]) -> tuple[tuple[Any, ...], list[float]]:
        """(exact-match group, numeric vector in [0, 1]) of a policy dict."""
        group = (policy["granularity"], bool(policy.get("quantize")), bool(policy.get("qat")))
        if policy["granularity"] == "structured":
            sp = list(policy["head_sparsity"]) + list(policy["ffn_sparsity"])
        else:
            sp = list(policy["weight_sparsity"])
        r = policy["retrain"]
        other = [_log_unit(r["steps"], *self.spans["steps"]),
                 _log_unit(r["learning_rate"], *self.spans["learning_rate"]),
                 _log_unit(policy.get("iterative_steps", 1), *self.spans["iterative_steps"]),
                 (policy.get("distillation") or {}).get("weight", 0.0)]
        crit = [0.5 * (policy["criterion"] == c) for c in self.criteria]
        return group, sp + other + crit

    def __call__(self, policy: dict[str, Any]) -> tuple[float, float] | None:
        g, x = self.features(policy)
        pool = self.by_group.get(g) or [r for gg, rs in self.by_group.items() if gg[:2] == g[:2] for r in rs]
        if not pool:
            pool = [r for gg, rs in self.by_group.items() if gg[0] == g[0] for r in rs]
        if not pool:
            raise ValueError(f"no observed trial of granularity {g[0]} to predict from")
        near = sorted(pool, key=lambda r: sum((a - b) ** 2 for a, b in zip(x, r[0])))[: self.k]
        w = [1.0 / (1e-3 + math.dist(x, r[0])) for r in near]
        stopped = sum(wi for wi, r in zip(w, near) if r[1] is None)
        if stopped > sum(w) / 2:
            return None
        done = [(wi, r[1]) for wi, r in zip(w, near) if r[1] is not None]
        tot = sum(wi for wi, _ in done)
        return (sum(wi * r["accuracy"] for wi, r in done) / tot, sum(wi * r["speedup"] for wi, r in done) / tot)


def observed(storage: str, names: list[str]) -> dict[str, list[Row]]:
    """Per study, (policy, result or None if stopped) of every counted COMPLETE or PRUNED trial."""
    per_study: dict[str, list[Row]] = {}
    for name in names:
        per_study[name] = [(r.policy, r.result if r.state == "COMPLETE" else None)
                           for r in trial_records(load_study(storage=storage, study_name=name))
                           if r.counted and r.policy and r.state in ("COMPLETE", "PRUNED")]
    return per_study


def seed_of(name: str) -> str:
    """The sampler seed part of a study name (``_seed1000``; the reference studies have none)."""
    return name.rsplit("_seed", 1)[1] if "_seed" in name else "0"


def leave_one_seed_out(per_study: dict[str, list[Row]], k: int) -> dict[str, float]:
    """How well the surrogate predicts the studies of a sampler seed it was not fitted on (both arms
    of a seed are held out together: they share their first random draws): stopped-or-not agreement,
    and mean absolute error of accuracy and speedup on trials both completed and predicted completed."""
    by_seed: dict[str, list[Row]] = {}
    for name, rows in per_study.items():
        by_seed.setdefault(seed_of(name), []).extend(rows)
    agree = n = 0
    acc_err: list[float] = []
    sp_err: list[float] = []
    for seed, held_out in by_seed.items():
        model = Surrogate([r for other, rs in by_seed.items() if other != seed for r in rs], k=k)
        for policy, result in held_out:
            pred = model(policy)
            n += 1
            agree += (pred is None) == (result is None)
            if pred is not None and result is not None:
                acc_err.append(abs(pred[0] - result["accuracy"]))
                sp_err.append(abs(pred[1] - result["speedup"]))
    return {"agree": agree / n, "acc_mae": statistics.mean(acc_err), "speed_mae": statistics.mean(sp_err),
            "n": n, "n_both": len(acc_err)}


def run_one(space: Any, sampler: Any, surrogate: Surrogate, n_trials: int,
            num_layers: int) -> list[tuple[float, float]]:
    """One study of ``n_trials`` against the surrogate, the space's trials in flight; its completed points."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    seen: set[str] = set()
    inflight: list[tuple[Any, dict[str, Any]]] = []
    points, done = [], 0
    while done < n_trials:
        while len(inflight) < space.trials_in_flight and done + len(inflight) < n_trials:
            trial = study.ask()
            policy = space.sample_policy(trial, num_layers).to_dict()
            key = policy_key(policy)
            if key in seen:
                study.tell(trial, state=TrialState.FAIL)
                continue
            seen.add(key)
            inflight.append((trial, policy))
        trial, policy = inflight.pop(0)
        out = surrogate(policy)
        if out is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, list(out))
            points.append(out)
        done += 1
    return points


def run_surrogate(args: argparse.Namespace) -> None:
    if args.with_gp:
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise AutopruneError("--with-gp needs scipy for Optuna's GPSampler: re-run scripts/install.sh "
                                 "(or .venv/bin/pip install scipy)") from None
    import optuna

    from benchmarks.minilm_sst2 import study_names

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_search_space(args.space)
    ref_name = study_names(space)["search"]
    db = Path(args.storage[len("sqlite:///"):]) if args.storage.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        raise AutopruneError(f"--storage {args.storage}: {db} does not exist; run benchmarks/minilm_sst2.py first "
                             "(the surrogate is built from its trials) or pass an archived copy of its studies")
    names = [n for n in optuna.get_all_study_names(args.storage)
             if n.startswith(ref_name) and not n.endswith("_uniform")]
    if not names:
        raise AutopruneError(f"no studies of {args.space} in {args.storage}: run benchmarks/minilm_sst2.py first "
                             "(the surrogate is built from its trials), or pass --storage with an archived copy of "
                             "its studies (its archive phase writes docs/data/minilm_sst2_studies.db)")
    ref = study_reference(load_study(storage=args.storage, study_name=ref_name))
    per_study = observed(args.storage, names)
    rows = [r for rs in per_study.values() for r in rs]
    first = rows[0][0]
    num_layers = len(first.get("head_sparsity") or first["weight_sparsity"])
    surrogate = Surrogate(rows, k=args.k)
    log.info("surrogate: %d observed trials (%d stopped) from %d studies; k=%d; reference point (%.4f, 1.0)",
             len(rows), sum(r is None for _, r in rows), len(names), args.k, ref[0])
    fit = leave_one_seed_out(per_study, args.k)
    log.info("surrogate fidelity, each sampler seed's studies predicted from the other seeds': "
             "stopped-or-completed agrees on %.0f%% of %d trials; on the %d both completed, accuracy off by %.4f "
             "and speedup by %.2fx (mean absolute)",
             100 * fit["agree"], fit["n"], fit["n_both"], fit["acc_mae"], fit["speed_mae"])

    candidates: dict[str, Callable[[int], Any]] = {
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
        f"tpe (as shipped, {space.startup_trials} startup)": lambda s: make_sampler(space.model_copy(update={"seed": s})),
        "tpe, 12 startup": lambda s: make_sampler(space.model_copy(update={"seed": s, "startup_trials": 12})),
        "tpe, independent (multivariate off)": lambda s: optuna.samplers.TPESampler(
            seed=s, constant_liar=True, n_startup_trials=space.startup_trials),
        "nsga2 (population 16)": lambda s: make_sampler(space.model_copy(update={"seed": s, "sampler": "nsga2"})),
    }
    if args.with_gp:
        candidates[f"gp ({space.startup_trials} startup)"] = lambda s: make_sampler(
            space.model_copy(update={"seed": s, "sampler": "gp"}))
    hv: dict[str, list[float]] = {}
    for label, make in candidates.items():
        t0 = time.perf_counter()
        hv[label] = [hypervolume(run_one(space, make(10_000 + i), surrogate, args.n_trials, num_layers), ref)
                     for i in range(args.seeds)]
        log.info("%s: %d seeds in %.0f s", label, args.seeds, time.perf_counter() - t0)
    base = statistics.mean(hv["random"])
    print(f"\nSurrogate comparison: {args.seeds} seeds x {args.n_trials} trials per sampler "
          f"(seeds 10000-{10_000 + args.seeds - 1}); hypervolume of each study's completed points.\n")
    print("| sampler | mean hypervolume | median | mean / mean random | seeds above random's median |")
    print("|---|---:|---:|---:|---:|")
    med_r = statistics.median(hv["random"])
    for label, v in hv.items():
        print(f"| {label} | {statistics.mean(v):.5f} | {statistics.median(v):.5f} | "
              f"{statistics.mean(v) / base:.2f}x | {sum(x > med_r for x in v)}/{len(v)} |")
    write_results(args, "surrogate", {"storage": args.storage, "studies": names, "k": args.k, "n_trials": args.n_trials,
                                      "reference_point": list(ref), "fidelity": fit, "hypervolume": hv,
                                      "dense": study_info(load_study(storage=args.storage, study_name=ref_name)).dense})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    real = sub.add_parser("real", help="samplers on real trials of a cheap space, several seeds")
    real.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    real.add_argument("--seeds", default="1,2,3,4,5,6")
    real.add_argument("--n-trials", type=int, default=18)
    real.add_argument("--startup", type=int, default=None, help="random trials before TPE / GP model the "
                      "front (default: a third of --n-trials)")
    real.add_argument("--samplers", default="random,tpe,gp")
    real.add_argument("--storage", default=None, help="default: sqlite:///<run_dir>/bench_samplers_real.db")
    sur = sub.add_parser("surrogate", help="samplers on a surrogate of the reference space's trials")
    sur.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    sur.add_argument("--storage", default=f"sqlite:///{ROOT / 'runs' / 'minilm_sst2_bench.db'}",
                     help="the reference benchmark's studies (default: its database under runs/)")
    sur.add_argument("--seeds", type=int, default=200, help="simulated studies per sampler")
    sur.add_argument("--n-trials", type=int, default=28)
    sur.add_argument("--k", type=int, default=5)
    sur.add_argument("--with-gp", action="store_true",
                     help="also compare Optuna's GPSampler as autoprune builds it for 'sampler: gp' (about 15 s "
                          "per simulated study on a 2-core CPU)")
    for p in (real, sur):
        add_results_option(p, "samplers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    (run_real if args.mode == "real" else run_surrogate)(args)


if __name__ == "__main__":
    run(main, log)
