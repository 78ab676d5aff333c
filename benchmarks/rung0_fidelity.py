"""How well a cheap rung ranks policies as their full budget does: rung-0 variants re-scored on the
archived random policies.

The multi-fidelity protocol runs (``docs/data/multifidelity*_studies.db``) hold every policy their random
arms completed at the full budget: random draws of the reference space, chosen by no rule, each with its
full-budget validation accuracy. The full-budget run does not depend on rung 0 (the top rung runs the
policy as sampled), so any rung-0 variant can be measured against those stored accuracies without
retraining them: this script runs each distinct policy at the rung a variant describes (a rung of the
space's ``rungs`` syntax, e.g. ``{retrain_steps: 0, reconstruct: least_squares}``), stores the result in a
study of its own (``rung0_<name>``: resumable, a policy already scored is skipped) and reports, per
variant, Spearman and Kendall between the two accuracies, over all policies and within each granularity,
and the seconds a policy took (without the one-off load), timed as the search's rung 0 times speed.

    .venv/bin/python benchmarks/rung0_fidelity.py --variant lsq "{retrain_steps: 0, reconstruct: least_squares}" \\
        --config search_spaces/minilm_sst2_finetuned.yaml
    .venv/bin/python benchmarks/rung0_fidelity.py --storage sqlite:///docs/data/rung0_fidelity_studies.db  # report

Without ``--variant`` it reports the variants already stored; ``--archive`` copies them into a SQLite
file to commit, so the table regenerates from a clean clone.

Cost on one thread: about 15-25 s a policy without retraining, plus the steps of a variant that retrains.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, add_results_option, run, write_results  # noqa: E402
from benchmarks.minilm_sst2 import archive  # noqa: E402
from benchmarks.multifidelity import (full_budget_policies, rank_corr, rung0_config, trial_seconds,  # noqa: E402
                                      with_rungs)
from autoprune.errors import AutopruneError  # noqa: E402

log = logging.getLogger("benchmarks.rung0_fidelity")

ARCHIVES = tuple(ROOT / "docs" / "data" / f"multifidelity{s}_studies.db" for s in ("", "2", "3", "4", "5"))


def archived_policies(archives: list[Path]) -> list[dict[str, Any]]:
    """Every distinct policy the random arms of ``archives`` completed at the full budget (a later archive's
    record of the same policy replaces an earlier one's): its policy, summary, accuracy and source."""
    import optuna

    out: dict[str, dict[str, Any]] = {}
    for p in archives:
        if not p.is_file():
            raise AutopruneError(f"{p}: no such study file; give the docs/data/multifidelity*_studies.db files")
        url = f"sqlite:///{p}"
        seeds = sorted(int(n[len("random_seed"):]) for n in optuna.get_all_study_names(url)
                       if n.startswith("random_seed") and n[len("random_seed"):].isdigit())
        for name, rec in full_budget_policies(url, seeds):
            out[rec.summary] = {"policy": rec.policy, "summary": rec.summary, "full_accuracy": rec.accuracy,
                                "full_speedup": rec.speedup, "source": [p.name, name, rec.number]}
    return list(out.values())


def score(space: Any, storage: str, name: str, policies: list[dict[str, Any]], trial_fn: Any = None) -> int:
    """Run every policy at the space's rung 0 into the study ``rung0_<name>`` (a stored one is skipped);
    returns how many ran now."""
    import optuna

    from autoprune.policy import PruningPolicy

    if trial_fn is None:
        from autoprune.trial import run_trial as trial_fn  # noqa: N806
    config = rung0_config(space)
    st = optuna.create_study(study_name=f"rung0_{name}", storage=storage, directions=["maximize", "maximize"],
                             load_if_exists=True)
    st.set_user_attr("rung", space.rungs[0].stored())
    done = {json.dumps(t.user_attrs["source"]) for t in st.trials}
    todo = [p for p in policies if json.dumps(p["source"]) not in done]
    for i, p in enumerate(todo, 1):
        policy = space.rung_policy(PruningPolicy.from_dict(p["policy"]), 0)
        res = trial_fn(config, policy)
        res = res.to_dict() if hasattr(res, "to_dict") else dict(res)
        st.add_trial(optuna.trial.create_trial(
            values=[res["accuracy"], res["speedup"]],
            user_attrs={"source": p["source"], "policy": policy.to_dict(), "summary": p["summary"],
                        "granularity": policy.granularity, "full_accuracy": p["full_accuracy"],
                        "full_speedup": p["full_speedup"], "phase_seconds": res.get("phase_seconds")}))
        log.info("%s %d/%d: %s rung 0 %.4f, full budget %.4f (%.1f s)", name, i, len(todo), p["summary"],
                 res["accuracy"], p["full_accuracy"], (res.get("phase_seconds") or {}).get("total", float("nan")))
    return len(todo)


#: rung-0 forms composed from two variants' stored results, one per granularity: the fourth protocol run's
#: rung 0 re-fitted structured cuts only (unstructured policies kept their own ``reconstruct: none``)
COMPOSED = {"refit_structured_only": {"structured": "lsq", "unstructured": "plain"}}


#: levers of a full-budget policy that rung 0 does not run, as features of :func:`loo_corrected`
LEVERS = {
    "retrain steps": lambda p: math.log(max(p["retrain"]["steps"], 1)),
    "learning rate": lambda p: math.log(p["retrain"]["learning_rate"]),
    "distillation": lambda p: float(bool(p.get("distillation")) and p["distillation"].get("weight", 0) > 0),
    "iterative steps": lambda p: math.log(p.get("iterative_steps", 1)),
    "int8": lambda p: float(bool(p.get("quantize"))), "qat": lambda p: float(bool(p.get("qat"))),
    "unstructured": lambda p: float(p["granularity"] == "unstructured"),
}


def loo_corrected(a0: list[float], af: list[float], policies: list[dict[str, Any]], levers: list[str],
                  ridge: float = 1.0) -> float:
    """Spearman between the full-budget accuracies and their leave-one-out predictions by a ridge
    regression on the rung-0 accuracy and ``levers`` of the full-budget policy (standardised): how
    well rung 0 would rank with a correction for what it does not run, learned from other policies
    run at both budgets and never from the one it predicts.

    Example (the full budget adds what the steps add; rung 0 alone misses it):
        >>> pols = [{"retrain": {"steps": s, "learning_rate": 1e-4}} for s in (100, 1000, 100, 1000, 100, 1000)]
        >>> a0 = [0.80, 0.79, 0.84, 0.83, 0.88, 0.87]
        >>> af = [a + (0.02 if p["retrain"]["steps"] == 1000 else 0.0) for a, p in zip(a0, pols)]
        >>> rank_corr(a0, af)[0] < 1.0, loo_corrected(a0, af, pols, ["retrain steps"])
        (True, 1.0)
    """
    import numpy as np

    x = np.array([[a, *(LEVERS[k](p) for k in levers)] for a, p in zip(a0, policies)], dtype=float)
    y = np.array(af, dtype=float)
    pred = []
    for i in range(len(y)):
        fit = np.arange(len(y)) != i
        mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-12
        design = np.c_[np.ones(fit.sum()), (x[fit] - mu) / sd]
        w = np.linalg.solve(design.T @ design + ridge * np.diag([0.0] + [1.0] * x.shape[1]), design.T @ y[fit])
        pred.append(float(np.r_[1.0, (x[i] - mu) / sd] @ w))
    return round(rank_corr(pred, af)[0], 12)


def _seconds(trials: list[Any]) -> list[float]:
    """Seconds each trial took without its one-off load."""
    return [x for t in trials if (x := trial_seconds(t.user_attrs.get("phase_seconds"))) is not None]


def report(storage: str, policies: list[dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """Per variant study (and per :data:`COMPOSED` form whose variants are stored): the rank correlation
    overall and within each granularity, and the seconds; with ``policies`` (the archived full-budget
    policies) also :func:`loo_corrected` for the retraining steps and for every lever."""
    import optuna

    rows, numbers = [], {}
    names = {n for n in optuna.get_all_study_names(storage) if n.startswith("rung0_")}
    studies: dict[str, tuple[Any, list[Any]]] = {}
    for name in sorted(names):
        st = optuna.load_study(study_name=name, storage=storage)
        studies[name[len("rung0_"):]] = (st.user_attrs.get("rung"), [t for t in st.trials if t.values])
    for name, parts in COMPOSED.items():  # each granularity's trials from the variant that ran it
        if all(v in studies for v in parts.values()):
            studies[name] = ({g: studies[v][0] for g, v in parts.items()},
                             [t for g, v in parts.items() for t in studies[v][1] if t.user_attrs["granularity"] == g])
    for name, (rung, trials) in studies.items():
        if len(trials) < 3:
            continue
        a0, af = [t.values[0] for t in trials], [t.user_attrs["full_accuracy"] for t in trials]
        rho, tau = rank_corr(a0, af)
        by = {}
        for g in sorted({t.user_attrs["granularity"] for t in trials}):
            xs = [t for t in trials if t.user_attrs["granularity"] == g]
            if len(xs) > 2:
                by[g] = {"n": len(xs), "spearman": rank_corr([t.values[0] for t in xs],
                                                               [t.user_attrs["full_accuracy"] for t in xs])[0]}
        secs = _seconds(trials)
        phases = {k: statistics.median(float((t.user_attrs.get("phase_seconds") or {}).get(k, 0.0)) for t in trials)
                  for k in ("prune", "reconstruct", "retrain", "quantize", "evaluate", "measure")}
        # a variant scored on fewer policies (stopped early) against every other on the same policies
        mine = {json.dumps(t.user_attrs["source"]) for t in trials}
        same, same_secs = {}, {}
        for other, (_, ot) in studies.items():
            shared = [t for t in ot if json.dumps(t.user_attrs["source"]) in mine]
            if other != name and len(shared) == len(trials) < len(ot):
                same[other] = rank_corr([t.values[0] for t in shared], [t.user_attrs["full_accuracy"] for t in shared])[0]
                other_secs = _seconds(shared)
                same_secs[other] = statistics.median(other_secs) if other_secs else None
        full = {p["summary"]: p["policy"] for p in policies or []}
        corrected = {}
        if full and all(t.user_attrs["summary"] in full for t in trials) and len(trials) > 5:
            pols = [full[t.user_attrs["summary"]] for t in trials]
            corrected = {"retrain steps": loo_corrected(a0, af, pols, ["retrain steps"]),
                         "every lever": loo_corrected(a0, af, pols, list(LEVERS))}
        numbers[name] = {
            "rung": rung, "n": len(trials), "spearman": rho, "kendall": tau, "others_on_these_policies": same,
            "others_seconds_median_on_these_policies": same_secs,
            "loo_corrected": corrected,
            "by_granularity": by, "seconds_median": statistics.median(secs) if secs else None,
            "phase_seconds_median": phases,
            "pairs": [{"policy": t.user_attrs["summary"], "rung0_accuracy": t.values[0],
                       "full_accuracy": t.user_attrs["full_accuracy"]} for t in trials]}
        rows.append(f"| {name} | {json.dumps(rung)} | {len(trials)} | "
                    f"{rho:+.3f} | {tau:+.3f} | " + ", ".join(f"{g} {x['spearman']:+.3f} ({x['n']})"
                                                          for g, x in by.items())
                    + f" | {statistics.median(secs):.1f} | " + ", ".join(f"{o} {v:+.3f}" for o, v in same.items())
                    + " | " + ", ".join(f"{k} {v:+.3f}" for k, v in corrected.items()) + " |")
    text = ("| variant | rung | policies | Spearman | Kendall | within one granularity | median s a policy | "
            "others on the same policies | corrected for, out of sample |\n|---|---|---:|---:|---:|---|---:|---|---|\n"
            + "\n".join(rows))
    return text, numbers


def main(argv: list[str] | None = None, trial_fn: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "RUNG"),
                    help="a rung-0 variant to score: a name and one rung as YAML, e.g. "
                         "shipped \"{retrain_steps: 0, reconstruct: least_squares}\" (repeatable)")
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--config", default=None, help="run config replacing the space's (the fine-tuned checkpoint's)")
    ap.add_argument("--archives", nargs="+", type=Path, default=list(ARCHIVES))
    ap.add_argument("--storage", default=f"sqlite:///{ROOT / 'runs' / 'bench_rung0_fidelity.db'}")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N policies (a smoke run)")
    ap.add_argument("--archive", type=Path, default=None,
                    help="copy the variant studies into this SQLite file (e.g. docs/data/rung0_fidelity_studies.db)")
    add_results_option(ap, "rung0_fidelity")
    args = ap.parse_args(argv)
    if args.storage.startswith("sqlite:///"):
        Path(args.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    policies = archived_policies(args.archives)[:args.limit]
    log.info("%d distinct full-budget random policies in %d archives", len(policies), len(args.archives))
    for name, rung in args.variant:
        space = with_rungs(Path(args.space), f"[{rung}, {{retrain_steps: full}}]", None)
        if args.config:
            space = space.model_copy(update={"config": str(Path(args.config).resolve())})
        n = score(space, args.storage, name, policies, trial_fn)
        log.info("variant %s: %d policies scored now", name, n)
    if args.archive:
        archive(args.storage, "rung0_", args.archive)
    text, numbers = report(args.storage, policies)
    print("rung-0 variants against the full budget, over the archived random policies (validation accuracy):")
    print(text)
    write_results(args, "variants", numbers)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(main, log)
