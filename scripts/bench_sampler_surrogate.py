"""Compare Optuna samplers on a surrogate of the reference search, built from the trials already run.

The real comparison (``bench_minilm_sst2.py --phases replicate``) costs about 2 h 20 min per sampler
seed pair on the 2-core CPU, so it cannot say which sampler to try next. This script answers that
cheaply, and only approximately: it fits a nearest-neighbour surrogate to every stopped or completed
trial of the reference space's studies in the benchmark database (search and random search, all sampler
seeds), then runs each candidate sampler for ``--n-trials`` trials against the surrogate, many seeds
each, and compares the hypervolume of the accuracy/speedup front with the same reference point as the
benchmark (dense validation accuracy minus 5 points, speedup 1.0).

The surrogate:
* a sampled policy is built by the space's own ``sample_policy`` (the same parameters, clipping and
  duplicate skipping as the real search, two trials in flight as in the space), then
* matched to the observed trials of the same granularity, int8 and QAT setting (these decide the
  speedup), by distance over per-layer sparsities, retraining steps, learning rate, iterative steps
  (log scales over the observed values), distillation weight and criterion; its ``k`` nearest neighbours (distance-weighted) decide whether
  the trial is stopped (pruned below the accuracy floor, as the real search does) and, if not, its
  accuracy and speedup.

It interpolates a few hundred noisy observations, so a sampler that looks better here is a candidate
for a real replication on fresh seeds, not a result. Its fidelity is printed first: each sampler
seed's studies predicted from the other seeds' trials. Compare its TPE / random ratio with the measured
one (1.05x over four seeds, docs/BENCHMARKS.md) as a second check.

Command: ``.venv/bin/python scripts/bench_sampler_surrogate.py [--seeds 200] [--n-trials 28] [--k 5]
[--with-gp]``
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_minilm_sst2 import hypervolume, reference_point, study_names  # noqa: E402

from autoprune._study import ATTR_DENSE, T_POLICY, completed_results  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.search import load_search_space  # noqa: E402
from autoprune.search._driver import _policy_key, counts, make_sampler  # noqa: E402

log = logging.getLogger("bench_sampler_surrogate")
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
    """Per study, (policy, result or None if stopped) of every counted trial of the named studies."""
    import optuna
    from optuna.trial import TrialState

    per_study: dict[str, list[Row]] = {}
    for name in names:
        rows = per_study.setdefault(name, [])
        study = optuna.load_study(study_name=name, storage=storage)
        res = dict(completed_results(study))
        for t in study.get_trials(deepcopy=False):
            if counts(t) and T_POLICY in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                rows.append((t.user_attrs[T_POLICY], res.get(t.number)))
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
            key = _policy_key(policy)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--storage", default=f"sqlite:///{ROOT / 'runs' / 'minilm_sst2_bench.db'}")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--n-trials", type=int, default=28)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--with-gp", action="store_true",
                    help="also compare Optuna's GPSampler as autoprune builds it for 'sampler: gp' (needs scipy, "
                         "which scripts/install.sh installs; about 15 s per simulated study on this CPU)")
    args = ap.parse_args()
    if args.with_gp:
        try:
            import scipy  # noqa: F401
        except ImportError:
            sys.exit("error: --with-gp needs scipy for Optuna's GPSampler: re-run scripts/install.sh "
                     "(or .venv/bin/pip install scipy)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        space = load_search_space(args.space)
        ref_name = study_names(space)["search"]
        all_names = [s.study_name for s in optuna.get_all_study_summaries(args.storage)]
        names = [n for n in all_names if n.startswith(ref_name) and not n.endswith("_uniform")]
        if not names:
            raise AutopruneError(f"no studies of {args.space} in {args.storage}: run "
                                 "scripts/bench_minilm_sst2.py first (the surrogate is built from its trials), "
                                 "or pass --storage sqlite:///docs/data/minilm_sst2_studies.db, the committed copy "
                                 "of its studies, where one exists")
        dense = optuna.load_study(study_name=ref_name, storage=args.storage).user_attrs[ATTR_DENSE]
    except AutopruneError as exc:
        sys.exit(f"error: {exc}")
    per_study = observed(args.storage, names)
    rows = [r for rs in per_study.values() for r in rs]
    first = rows[0][0]
    num_layers = len(first.get("head_sparsity") or first["weight_sparsity"])
    ref = reference_point(dense["accuracy"])
    surrogate = Surrogate(rows, k=args.k)
    log.info("surrogate: %d observed trials (%d stopped) from %d studies; k=%d; reference point (%.4f, 1.0)",
             len(rows), sum(r is None for _, r in rows), len(names), args.k, ref[0])
    fit = leave_one_seed_out(per_study, args.k)
    log.info("surrogate fidelity, each sampler seed's studies predicted from the other seeds': "
             "stopped-or-completed agrees on %.0f%% of %d trials; on the %d both completed, accuracy off by %.4f "
             "and speedup by %.2fx (mean absolute)",
             100 * fit["agree"], fit["n"], fit["n_both"], fit["acc_mae"], fit["speed_mae"])

    candidates = {
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


if __name__ == "__main__":
    main()
