#!/usr/bin/env python
"""Multi-fidelity search against random search at the full budget, at equal wall time per arm.

The protocol (written before any run; docs/BENCHMARKS.md, "Multi-fidelity search against random search at equal wall time", states it with its decision rule):

``search`` phase, on the reference space (``search_spaces/minilm_sst2.yaml``: MiniLM-L6 / SST-2, trials
scored on the validation rows as in every search):

* arm ``mf``: the space as shipped, with its ``rungs`` (rung 0: prune + least-squares reconstruction, no
  retraining; rung 1: 100 steps; top rung: the full budget the policy asks for), its sampler on rung 0
  and its ``promote_fraction``;
* arm ``random``: the same space without rungs and with Optuna's RandomSampler: random search at the
  full budget, today's baseline;
* both arms get ``--minutes`` of wall time at each sampler seed of ``--seeds`` (at least 3), the same
  ``trials_in_flight`` and CPUs; arms run one after another, the order rotated seed by seed so that the
  load of a shared machine drifts over both arms alike;
* an arm's clock runs only while its search runs (``bench_segments`` on its study: the start and end
  of each run), so a stopped benchmark resumes where it was; the search is started with the time its
  arm has left (``run_search(timeout_s=...)``): no trial starts after it, the trials in flight finish
  and are stored but are scored only if they completed within the arm's minutes;
* score: the hypervolume of the arm's **top-rung** front (:func:`autoprune.study.front` of the top
  study: lower-rung results never enter it) above :func:`autoprune.study.reference_point` of the dense
  validation accuracy (dense - 0.05, speedup 1.0); per seed the ratio mf / random, then their mean;
* the time the mf arm needed to reach the hypervolume of the 28-trial reference run (0.0648): the arm
  clock at the first top-rung completion whose front reaches it (None: not within the arm's minutes).

``correlation`` phase: ``--n-policies`` (>= 30) random policies of the same space, each run at rung 0
and at the full budget (a 2-rung copy of the space with ``promote_fraction: 1``, random sampler), and
the Spearman and Kendall rank correlations of their rung-0 and full-budget validation accuracies.

``report`` phase: both tables printed and written to ``docs/results/multifidelity.json`` (sections
``search`` and ``correlation``); ``archive``: every study (with its rung studies) copied with
``optuna.copy_study`` into ``docs/data/multifidelity_studies.db``, so the tables regenerate from a clean
clone (``report --storage sqlite:///docs/data/multifidelity_studies.db``).

Rung 0 measures speed for real (no latency table): its speedups are interleaved medians like every
trial's.

    .venv/bin/python benchmarks/multifidelity.py [--phases search,correlation,report,archive]
        [--minutes 60] [--seeds 1,2,3] [--n-policies 30] [-c search_spaces/minilm_sst2.yaml] [--storage URL]

Cost on a 2-core CPU: 2 arms x 3 seeds x 60 min = 6 h for ``search``, about 2 h for ``correlation``
(30 policies at rung 0 and at the full budget), plus the dense baseline once (51 min) when not cached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, add_results_option, parse_ints, run, study_reference, write_results  # noqa: E402
from benchmarks.minilm_sst2 import archive  # noqa: E402

from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.search import load_search_space, run_search  # noqa: E402
from autoprune.search import SearchSpace  # noqa: E402
from autoprune.study import (TrialRecord, completed_trials, counted_trials, hypervolume, rungs,  # noqa: E402
                             trial_records)

log = logging.getLogger("benchmarks.multifidelity")

ARMS = ("mf", "random")
PHASES = ("search", "correlation", "report", "archive")
#: hypervolume of the 28-trial reference search (docs/BENCHMARKS.md), the mf arm's time-to-target mark
REFERENCE_HV = 0.0648
ATTR_SEGMENTS = "bench_segments"
ATTR_BUDGET = "bench_minutes"
ARCHIVE = ROOT / "docs" / "data" / "multifidelity_studies.db"
UNBOUNDED = 1_000_000  # n_trials of a timed arm: its wall time is what ends it


# ----------------------------------------------------------------------------- arms and their clocks
def arm_space(space: SearchSpace, arm: str, seed: int) -> SearchSpace:
    """The space one arm searches at one sampler seed (the random arm: no rungs, random sampler)."""
    if arm not in ARMS:
        raise AutopruneError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    if arm == "mf" and not space.rungs:
        raise AutopruneError(f"{space.source}: the mf arm needs a space with 'rungs'")
    update: dict[str, Any] = {"seed": seed, "n_trials": UNBOUNDED, "timeout_s": None}
    if arm == "random":
        update.update(sampler="random", rungs=None)
    return space.model_copy(update=update)


def plan(seeds: list[int], arms: tuple[str, ...] = ARMS) -> list[tuple[int, str]]:
    """(seed, arm) in run order, the arms rotated by one place per seed.

    >>> plan([1, 2, 3])
    [(1, 'mf'), (1, 'random'), (2, 'random'), (2, 'mf'), (3, 'mf'), (3, 'random')]
    """
    out = []
    for i, seed in enumerate(seeds):
        k = i % len(arms)
        out += [(seed, a) for a in arms[k:] + arms[:k]]
    return out


def study_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}"


def arm_seconds(segments: list[list[float]], when: float | None = None) -> float:
    """Arm-clock seconds of the run ``segments`` ([start, end] epoch seconds) up to ``when`` (epoch
    seconds; None: all of them).

    >>> arm_seconds([[100.0, 160.0], [500.0, 530.0]]), arm_seconds([[100.0, 160.0], [500.0, 530.0]], when=510.0)
    (90.0, 70.0)
    """
    total = 0.0
    for start, end in segments:
        stop = end if when is None else min(end, when)
        total += max(0.0, stop - start)
    return total


def _epoch(t: dt.datetime) -> float:
    return t.timestamp()


def scored(records: list[TrialRecord], segments: list[list[float]], budget_s: float) -> list[tuple[float, TrialRecord]]:
    """The completed records finished within ``budget_s`` of arm clock, with their arm-clock times, in
    order of completion."""
    out = []
    for r in completed_trials(records):
        if r.datetime_complete is None:
            continue
        t = arm_seconds(segments, _epoch(r.datetime_complete))
        if t <= budget_s:
            out.append((t, r))
    return sorted(out, key=lambda x: (x[0], x[1].number))


def time_to(points: list[tuple[float, TrialRecord]], reference: tuple[float, float], target: float) -> float | None:
    """Arm-clock seconds at which the front of ``points`` (in completion order) first reaches hypervolume
    ``target``; None if it never does.

    >>> from autoprune.study import trial_records
    >>> import optuna
    >>> s = optuna.create_study(directions=["maximize", "maximize"])
    >>> for v in ([0.86, 1.5], [0.88, 2.0]):
    ...     s.add_trial(optuna.trial.create_trial(values=v))
    >>> a, b = trial_records(s)
    >>> time_to([(10.0, a), (25.0, b)], (0.85, 1.0), 0.02), time_to([(10.0, a)], (0.85, 1.0), 0.02)
    (25.0, None)
    """
    seen: list[TrialRecord] = []
    for t, r in points:
        seen.append(r)
        if hypervolume(seen, reference) >= target:
            return t
    return None


def run_arm(space: SearchSpace, arm: str, seed: int, storage: str, minutes: float,
            trial_fn: Callable[..., Any] | None = None, executor: Any = None) -> None:
    """Run (or continue) one arm until its clock reaches ``minutes``; the run's segment is stored even
    when it is interrupted."""
    import optuna

    name = study_name(arm, seed)
    budget = minutes * 60.0
    segments = _segments(storage, name)
    left = budget - arm_seconds(segments)
    if left <= 0:
        log.info("%s: its %.0f minutes are spent", name, minutes)
        return
    log.info("%s: %.1f of %.0f minutes left", name, left / 60, minutes)
    start = time.time()
    try:
        run_search(arm_space(space, arm, seed), study_name=name, storage=storage, timeout_s=left, trial_fn=trial_fn,
                   executor=executor, progress=trial_fn is None)
    finally:
        st = optuna.load_study(study_name=name, storage=storage)
        st.set_user_attr(ATTR_SEGMENTS, [*segments, [start, time.time()]])
        st.set_user_attr(ATTR_BUDGET, minutes)


def _segments(storage: str, name: str) -> list[list[float]]:
    import optuna

    if name not in optuna.get_all_study_names(storage):
        return []
    return list(optuna.load_study(study_name=name, storage=storage).user_attrs.get(ATTR_SEGMENTS) or [])


# ----------------------------------------------------------------------------- report
def arm_result(storage: str, arm: str, seed: int, minutes: float) -> dict[str, Any] | None:
    """One arm's numbers: hypervolume of its top-rung front within its minutes, trials per rung, time to
    the reference hypervolume; None when the arm has not run."""
    import optuna

    from autoprune.search import open_study

    name = study_name(arm, seed)
    if name not in optuna.get_all_study_names(storage):
        return None
    st = open_study(storage, name)
    segments = list(st.user_attrs.get(ATTR_SEGMENTS) or [])
    ref = study_reference(st)
    levels = rungs(st)
    records = levels[-1].records if levels else trial_records(st)
    pts = scored(records, segments, minutes * 60.0)
    t_ref = time_to(pts, ref, REFERENCE_HV)
    return {"arm": arm, "seed": seed, "study": name, "arm_minutes": round(arm_seconds(segments) / 60, 2),
            "hypervolume": hypervolume([r for _, r in pts], ref), "reference_point": list(ref),
            "top_rung_completed": len(pts),
            "per_rung_finished": [len(lvl.finished) for lvl in levels] if levels else [len(counted_trials(records))],
            "minutes_to_reference_hv": None if t_ref is None else round(t_ref / 60, 2)}


def search_report(storage: str, seeds: list[int], minutes: float) -> tuple[str, dict[str, Any]]:
    """The search table (per seed: both arms' hypervolumes and their ratio) and its numbers."""
    rows = ["| seed | mf hypervolume | random hypervolume | mf / random | mf top-rung trials (rung 0, ...) | "
            "random trials | mf minutes to 0.0648 |", "|---:|---:|---:|---:|---|---:|---:|"]
    per_seed, ratios = [], []
    for seed in seeds:
        mf, rnd = arm_result(storage, "mf", seed, minutes), arm_result(storage, "random", seed, minutes)
        if mf is None or rnd is None:
            continue
        ratio = mf["hypervolume"] / rnd["hypervolume"] if rnd["hypervolume"] > 0 else None
        if ratio is not None:
            ratios.append(ratio)
        per_seed.append({"seed": seed, "mf": mf, "random": rnd, "ratio": ratio})
        rows.append(f"| {seed} | {mf['hypervolume']:.5f} | {rnd['hypervolume']:.5f} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'} | {mf['top_rung_completed']} "
                    f"({', '.join(map(str, mf['per_rung_finished']))}) | {rnd['top_rung_completed']} | "
                    f"{'-' if mf['minutes_to_reference_hv'] is None else mf['minutes_to_reference_hv']} |")
    summary = {"minutes_per_arm": minutes, "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
               "mean_ratio": statistics.mean(ratios) if ratios else None,
               "ratio_of_means": (statistics.mean(p["mf"]["hypervolume"] for p in per_seed)
                                  / statistics.mean(p["random"]["hypervolume"] for p in per_seed))
               if per_seed and all(p["random"]["hypervolume"] > 0 for p in per_seed) else None,
               "above_random_at_every_seed": bool(ratios) and all(r > 1.0 for r in ratios),
               "reference_hv": REFERENCE_HV, "latency_table": None}
    if ratios:
        rows.append(f"\nmean of the per-seed ratios {summary['mean_ratio']:.2f}x (target >= 1.5x), above 1.0x at "
                    f"{sum(r > 1 for r in ratios)}/{len(ratios)} seeds (target: every seed)")
    return "\n".join(rows), summary


def correlation_space(space: SearchSpace, n: int) -> SearchSpace:
    """Rung 0 and the full budget of ``space``, every policy promoted, policies drawn at random."""
    if not space.rungs:
        raise AutopruneError(f"{space.source}: the correlation phase needs a space with 'rungs'")
    top = space.rungs[-1]
    return space.model_copy(update={"rungs": [space.rungs[0], top], "promote_fraction": 1.0, "sampler": "random",
                                    "n_trials": n, "timeout_s": None})


def correlation_report(storage: str) -> tuple[str, dict[str, Any]]:
    """Spearman and Kendall correlation of rung-0 and full-budget accuracy over the correlation study."""
    import optuna
    from scipy.stats import kendalltau, spearmanr

    from autoprune.search import open_study
    from autoprune.visualization import rung_chains

    if "correlation" not in optuna.get_all_study_names(storage):
        return "(correlation phase not run)", {}
    levels = rungs(open_study(storage, "correlation"))
    pairs = [(c[0], c[-1]) for c in rung_chains(levels) if len(c) == len(levels) and c[0].complete and c[-1].complete]
    if len(pairs) < 3:
        return f"(correlation: {len(pairs)} complete pairs so far)", {"n": len(pairs)}
    a0 = [a.accuracy for a, _ in pairs]
    af = [b.accuracy for _, b in pairs]
    rho, tau = spearmanr(a0, af).statistic, kendalltau(a0, af).statistic
    numbers = {"n": len(pairs), "spearman": float(rho), "kendall": float(tau), "target_spearman": 0.8,
               "rung0": levels[0].label, "full": levels[-1].label,
               "pairs": [{"policy": a.summary, "rung0_accuracy": a.accuracy, "full_accuracy": b.accuracy,
                          "speedup": b.speedup} for a, b in pairs]}
    text = (f"rank correlation of rung-0 and full-budget validation accuracy over {len(pairs)} policies: "
            f"Spearman {rho:+.3f} (target >= 0.8), Kendall {tau:+.3f}")
    return text, numbers


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None, trial_fn: Callable[..., Any] | None = None, executor: Any = None) -> None:
    """The benchmark; ``trial_fn``/``executor`` replace the real trials and Ray (tests only)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--phases", default="search,correlation,report,archive", help=f"from {', '.join(PHASES)}")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall time of each arm at each seed")
    ap.add_argument("--seeds", default="1,2,3", help="sampler seeds (at least 3 for the protocol)")
    ap.add_argument("--n-policies", type=int, default=30, help="policies of the correlation phase")
    ap.add_argument("--storage", default=None, help="default: sqlite:///<run_dir>/bench_multifidelity.db")
    ap.add_argument("--archive", type=Path, default=ARCHIVE, help="SQLite file the archive phase writes")
    add_results_option(ap, "multifidelity")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    if set(phases) - set(PHASES):
        raise AutopruneError(f"--phases: unknown phase(s) {', '.join(sorted(set(phases) - set(PHASES)))}; "
                             f"choose from {', '.join(PHASES)}")
    seeds = parse_ints(args.seeds, "--seeds")
    if not seeds or not args.minutes > 0 or args.n_policies < 3:
        raise AutopruneError("give --seeds (e.g. 1,2,3), --minutes > 0 and --n-policies >= 3")
    space = load_search_space(args.space)
    run_dir = Path(space.run_config().run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{run_dir / 'bench_multifidelity.db'}"
    if trial_fn is None and {"search", "correlation"} & set(phases):
        from autoprune.train import ensure_baseline

        ensure_baseline(space.run_config())  # trained (or loaded) before any arm's clock runs
    if "search" in phases:
        for seed, arm in plan(seeds):
            run_arm(space, arm, seed, storage, args.minutes, trial_fn=trial_fn, executor=executor)
    if "correlation" in phases:
        run_search(correlation_space(space, args.n_policies), study_name="correlation", storage=storage,
                   trial_fn=trial_fn, executor=executor, progress=trial_fn is None)
    if "report" in phases:
        text, numbers = search_report(storage, seeds, args.minutes)
        print(text)
        write_results(args, "search", numbers)
        text, numbers = correlation_report(storage)
        print(text)
        if numbers:
            write_results(args, "correlation", numbers)
    if "archive" in phases:
        for n in archive(storage, "", args.archive):
            log.info("archived study %s in %s", n, args.archive)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(main, log)
