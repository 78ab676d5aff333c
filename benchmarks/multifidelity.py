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
* both arms get ``--minutes`` of wall time at each sampler seed of ``--seeds`` (at least 3). With
  ``--side-by-side`` (the protocol's setting) the two arms of a seed run at the same time, each in
  its own process with half the space's ``trials_in_flight`` (one trial at a time on a 2-core
  machine, one thread each), so whatever else loads the machine loads both arms alike; without it
  the arms run one after another, the order rotated seed by seed. ``--in-process`` runs each arm's
  trials in its own process (no Ray): the arms then compare search strategies, not dispatch, and
  two local Rays need not share one machine;
* an arm's clock runs only while its search runs (``bench_segments`` on its study: the start and end
  of each run), so a stopped benchmark resumes where it was; the search is started with the time its
  arm has left (``run_search(timeout_s=...)``): no trial starts after it, the trials in flight finish
  and are stored but are scored only if they completed within the arm's minutes;
* score: the hypervolume of the arm's **top-rung** front (:func:`autoprune.study.front` of the top
  study: lower-rung results never enter it) above :func:`autoprune.study.reference_point` of the dense
  validation accuracy (dense - 0.05, speedup 1.0); per seed the ratio mf / random, then their mean;
* the time the mf arm needed to reach the hypervolume of the 28-trial reference run (0.0648): the arm
  clock at the first top-rung completion whose front reaches it (None: not within the arm's minutes).

``correlation`` phase: every policy the random arms completed at the full budget (random policies of
the space, not chosen by any rule) is run again at rung 0 (prune + least-squares reconstruction, no
retraining); the Spearman and Kendall rank correlations of the rung-0 and full-budget validation
accuracies over them (target: at least 30 policies). Each rung-0 result is stored at once in the
study ``correlation`` (values: rung-0 accuracy and speedup; user attrs: the policy, its source trial
and its full-budget accuracy), so a stopped phase resumes where it was.

``report`` phase: both tables printed and written to ``docs/results/multifidelity.json`` (sections
``search`` and ``correlation``); ``archive``: every study (with its rung studies) copied with
``optuna.copy_study`` into ``docs/data/multifidelity_studies.db``, so the tables regenerate from a clean
clone (``report --storage sqlite:///docs/data/multifidelity_studies.db``).

Rung 0 measures speed for real (no latency table): its speedups are interleaved medians like every
trial's.

    .venv/bin/python benchmarks/multifidelity.py [--phases search,correlation,report,archive]
        [--minutes 60] [--seeds 1,2,3] [--side-by-side] [--in-process] [-c search_spaces/minilm_sst2.yaml]
        [--config RUN_CONFIG] [--storage URL]

``--config`` replaces the space's run config, e.g. ``search_spaces/minilm_sst2_finetuned.yaml``: the
checkpoint the reference recipe trained, used as it is (no 51-minute baseline run). Cost on a 2-core
CPU side by side: 3 seeds x ``--minutes`` for ``search``, about 20 s a policy for ``correlation``.
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

from benchmarks.common import (ROOT, add_results_option, parse_ints, rotated_plan, run, study_reference,  # noqa: E402
                               write_results)
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
DEFAULT_MINUTES = 60.0
UNBOUNDED = 1_000_000  # n_trials of a timed arm: its wall time is what ends it


# ----------------------------------------------------------------------------- arms and their clocks
def arm_space(space: SearchSpace, arm: str, seed: int, trials_in_flight: int | None = None) -> SearchSpace:
    """The space one arm searches at one sampler seed (the random arm: no rungs, random sampler)."""
    if arm not in ARMS:
        raise AutopruneError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    if arm == "mf" and not space.rungs:
        raise AutopruneError(f"{space.source}: the mf arm needs a space with 'rungs'; give them with --rungs")
    update: dict[str, Any] = {"seed": seed, "n_trials": UNBOUNDED, "timeout_s": None,
                              "trials_in_flight": trials_in_flight or space.trials_in_flight}
    if arm == "random":
        update.update(sampler="random", rungs=None)
    return space.model_copy(update=update)


def with_rungs(path: Path, rungs_yaml: str | None, fraction: float | None) -> SearchSpace:
    """The space of ``path`` with other ``rungs`` (a YAML list) and ``promote_fraction``, validated as
    the space file would be with them in it.

    >>> sp = with_rungs(ROOT / "search_spaces" / "minilm_sst2.yaml",
    ...                 "[{retrain_steps: 0, also_final: true}, {retrain_steps: full}]", 0.5)
    >>> [r.label() for r in sp.rungs], sp.promote_fraction
    (['0 steps, also final', 'full budget'], 0.5)
    """
    import yaml

    from autoprune.search import space_from_dict

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # main() loaded it first: a valid space, a mapping
    if rungs_yaml is not None:
        try:
            raw["rungs"] = yaml.safe_load(rungs_yaml)
        except yaml.YAMLError as exc:
            raise AutopruneError(f"--rungs: not YAML ({str(exc).splitlines()[0]}); give a list such as "
                                 "\"[{retrain_steps: 0}, {retrain_steps: full}]\"") from None
    if fraction is not None:
        raw["promote_fraction"] = fraction
    return space_from_dict(raw, f"{path} with --rungs/--promote-fraction", path.resolve().parent)


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
            trial_fn: Callable[..., Any] | None = None, executor: Any = None,
            trials_in_flight: int | None = None) -> None:
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
        run_search(arm_space(space, arm, seed, trials_in_flight), study_name=name, storage=storage, timeout_s=left, trial_fn=trial_fn,
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
def arm_result(storage: str, arm: str, seed: int, minutes: float | None) -> dict[str, Any] | None:
    """One arm's numbers: hypervolume of its top-rung front within its minutes (None: the minutes the arm
    was run with, stored on its study), trials per rung, time to the reference hypervolume; None when
    the arm has not run."""
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
    if minutes is None:
        minutes = float(st.user_attrs.get(ATTR_BUDGET) or DEFAULT_MINUTES)
    pts = scored(records, segments, minutes * 60.0)
    t_ref = time_to(pts, ref, REFERENCE_HV)
    return {"arm": arm, "seed": seed, "study": name, "budget_minutes": minutes,
            "arm_minutes": round(arm_seconds(segments) / 60, 2),
            "hypervolume": hypervolume([r for _, r in pts], ref), "reference_point": list(ref),
            "top_rung_completed": len(pts),
            "per_rung_finished": [len(lvl.finished) for lvl in levels] if levels else [len(counted_trials(records))],
            "minutes_to_reference_hv": None if t_ref is None else round(t_ref / 60, 2)}


def search_report(storage: str, seeds: list[int], minutes: float | None) -> tuple[str, dict[str, Any]]:
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
    stored = sorted({p[a]["budget_minutes"] for p in per_seed for a in ARMS})  # the minutes each arm ran with
    summary = {"minutes_per_arm": minutes if minutes is not None else stored,
               "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
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


CORRELATION = "correlation"


def full_budget_policies(storage: str, seeds: list[int]) -> list[tuple[str, TrialRecord]]:
    """(study, record) of every trial the random arms completed at the full budget: random policies
    of the space, chosen by no rule."""
    import optuna

    from autoprune.search import open_study

    names = set(optuna.get_all_study_names(storage))
    out = []
    for seed in seeds:
        name = study_name("random", seed)
        if name in names:
            out += [(name, r) for r in completed_trials(trial_records(open_study(storage, name)))]
    return out


def rung0_config(space: SearchSpace) -> Any:
    """The run config a search's rung 0 runs with: the space's, one trial's threads, speed screened (or
    predicted by a latency table, when rung 0 says ``speed: table``)."""
    config = space.run_config()
    if config.torch_threads is None:
        config = config.model_copy(update={"torch_threads": max(1, int(space.cpus_per_trial))})
    table = bool(space.rungs) and space.rungs[0].speed == "table"
    return config.model_copy(update={"measure": config.measure.screening(table=table)})  # as the search's rung 0


def score_rung0(space: SearchSpace, storage: str, seeds: list[int], trial_fn: Callable[..., Any] | None = None) -> int:
    """Run every full-budget policy of the random arms at rung 0 (once: a stored one is skipped) and
    store the result in the study ``correlation``; returns how many were run now."""
    import optuna

    from autoprune.policy import PruningPolicy
    if not space.rungs:
        raise AutopruneError(f"{space.source}: the correlation phase needs a space with 'rungs' (rung 0 is scored); "
                             "give them with --rungs")
    if trial_fn is None:
        from autoprune.trial import run_trial as trial_fn  # noqa: N806
    config = rung0_config(space)
    st = optuna.create_study(study_name=CORRELATION, storage=storage, directions=["maximize", "maximize"], load_if_exists=True)
    done = {(t.user_attrs.get("source_study"), t.user_attrs.get("source_trial")) for t in st.trials}
    todo = [(n, r) for n, r in full_budget_policies(storage, seeds) if (n, r.number) not in done]
    for i, (name, rec) in enumerate(todo, 1):
        policy = space.rung_policy(PruningPolicy.from_dict(rec.policy), 0)
        res = trial_fn(config, policy)
        res = res.to_dict() if hasattr(res, "to_dict") else dict(res)
        st.add_trial(optuna.trial.create_trial(
            values=[res["accuracy"], res["speedup"]],
            user_attrs={"source_study": name, "source_trial": rec.number, "policy": policy.to_dict(),
                        "summary": rec.summary, "full_accuracy": rec.accuracy, "full_speedup": rec.speedup,
                        "phase_seconds": res.get("phase_seconds")}))
        log.info("correlation %d/%d: %s rung 0 %.4f, full budget %.4f", i, len(todo), rec.summary, res["accuracy"],
                 rec.accuracy)
    return len(todo)


def promoted_pairs(storage: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Every policy the mf arms carried to the top rung: its summary, rung-0 and top-rung accuracy and
    speedup (screened at rung 0, timed in full at the top). A sample chosen by the promotion rule (the
    best of rung 0), so its accuracy correlation is range-restricted."""
    import optuna

    from autoprune.search import open_study
    from autoprune.visualization import rung_chains

    names = set(optuna.get_all_study_names(storage))
    out = []
    for seed in seeds:
        name = study_name("mf", seed)
        if name not in names:
            continue
        levels = rungs(open_study(storage, name))
        for c in rung_chains(levels):
            if len(c) == len(levels) and c[0].complete and c[-1].complete:
                out.append({"policy": c[0].summary, "rung0_accuracy": float(c[0].accuracy),
                            "full_accuracy": float(c[-1].accuracy), "rung0_speedup": float(c[0].speedup),
                            "full_speedup": float(c[-1].speedup)})
    return out


def trial_seconds(phases: dict[str, Any] | None) -> float | None:
    """Seconds a trial took without its one-off load (``phase_seconds``), None when it recorded none.

    Example:
        >>> trial_seconds({"load": 20.0, "total": 32.5}), trial_seconds({})
        (12.5, None)
    """
    phases = phases or {}
    return float(phases["total"]) - float(phases.get("load", 0.0)) if "total" in phases else None


def rung0_seconds(storage: str, seeds: list[int]) -> list[float]:
    """Wall seconds of every complete rung-0 trial of the mf arms, without the first trial's one-off load."""
    import optuna

    from autoprune.search import open_study

    names = set(optuna.get_all_study_names(storage))
    out = []
    for seed in seeds:
        if study_name("mf", seed) in names:
            levels = rungs(open_study(storage, study_name("mf", seed)))
            for r in levels[0].finished if levels else []:
                secs = trial_seconds((r.result or {}).get("phase_seconds"))
                if r.complete and secs is not None:
                    out.append(secs)
    return out


def speed_error(pairs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Relative error of the screened rung-0 speedup against the top rung's full measurement of the same
    policy: median and worst of ``|rung0 / full - 1|``."""
    errs = [abs(p["rung0_speedup"] / p["full_speedup"] - 1.0) for p in pairs if p["full_speedup"] > 0]
    if not errs:
        return None
    return {"n": len(errs), "median": statistics.median(errs), "worst": max(errs), "target_median": 0.05}


def rank_corr(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    return float(spearmanr(a, b).statistic), float(kendalltau(a, b).statistic)


def correlation_report(storage: str, seeds: list[int]) -> tuple[str, dict[str, Any]]:
    """Spearman and Kendall correlation of rung-0 and full-budget accuracy over the correlation study (the
    random arms' policies), and, apart, over the policies the mf arms promoted to the top rung."""
    import optuna

    if CORRELATION not in optuna.get_all_study_names(storage):
        return "(correlation phase not run)", {}
    trials = [t for t in optuna.load_study(study_name=CORRELATION, storage=storage).trials if t.values]
    if len(trials) < 3:
        return f"(correlation: {len(trials)} policies scored so far)", {"n": len(trials)}
    a0 = [t.values[0] for t in trials]
    af = [t.user_attrs["full_accuracy"] for t in trials]
    rho, tau = rank_corr(a0, af)
    secs = [x for t in trials if (x := trial_seconds(t.user_attrs.get("phase_seconds"))) is not None]
    promoted = promoted_pairs(storage, seeds)
    searched = rung0_seconds(storage, seeds)
    numbers: dict[str, Any] = {
        "n": len(trials), "spearman": rho, "kendall": tau, "target_spearman": 0.8, "target_n": 30,
        "rung0_seconds_median": statistics.median(secs) if secs else None,
        "search_rung0_seconds": {"n": len(searched), "median": statistics.median(searched),
                                 "quartiles": statistics.quantiles(searched, n=4)[::2] if len(searched) > 1 else None,
                                 "target": 10.0} if searched else None,
        "screened_speed_error": speed_error(promoted),
        "pairs": [{"policy": t.user_attrs["summary"], "source": [t.user_attrs["source_study"],
                                                                 t.user_attrs["source_trial"]],
                   "rung0_accuracy": t.values[0], "full_accuracy": t.user_attrs["full_accuracy"],
                   "full_speedup": t.user_attrs["full_speedup"]} for t in trials],
        "promoted": {"n": len(promoted), "pairs": promoted}}
    text = (f"rank correlation of rung-0 and full-budget validation accuracy over {len(trials)} random-arm policies: "
            f"Spearman {rho:+.3f} (target >= 0.8 over >= 30), Kendall {tau:+.3f}")
    if searched:
        text += (f"\nrung 0 in the mf arms: median {statistics.median(searched):.1f} s per policy over {len(searched)} "
                 f"(target <= 10 s)")
    err = numbers["screened_speed_error"]
    if err:
        text += (f"\nscreened rung-0 speedup against the top rung's full measurement, over {err['n']} promoted "
                 f"policies: median error {err['median']:.1%}, worst {err['worst']:.1%} (target median <= 5%)")
    if len(promoted) >= 3:
        x0, xf = [p["rung0_accuracy"] for p in promoted], [p["full_accuracy"] for p in promoted]
        prho, ptau = rank_corr(x0, xf)
        both = rank_corr(a0 + x0, af + xf)
        numbers["promoted"].update(spearman=prho, kendall=ptau)
        numbers["pooled"] = {"n": len(trials) + len(promoted), "spearman": both[0], "kendall": both[1]}
        text += (f"\nover the {len(promoted)} policies the mf arms promoted to the top rung (chosen by rung 0): "
                 f"Spearman {prho:+.3f}, Kendall {ptau:+.3f}; both sets pooled ({len(trials) + len(promoted)}): "
                 f"Spearman {both[0]:+.3f}")
    return text, numbers


def run_side_by_side(argv_base: list[str], seed: int, run_dir: Path, storage_file: Path) -> None:
    """Both arms of one seed at the same time, each in its own process (``--arms``) writing its own
    SQLite file (two writers never contend for one), their output in ``run_dir/bench_<study>.log``;
    then both arms' studies are copied into ``storage_file``. Raises if either arm fails."""
    import subprocess

    procs = []
    for arm in ARMS:
        name = study_name(arm, seed)
        own = run_dir / f"bench_{name}.db"
        out = (run_dir / f"bench_{name}.log").open("a", encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv_base, "--phases", "search", "--seeds", str(seed),
               "--arms", arm, "--storage", f"sqlite:///{own}"]
        log.info("seed %d, arm %s: %s (log %s)", seed, arm, " ".join(cmd[1:]), out.name)
        procs.append((arm, own, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), out))
    failed = []
    for arm, own, proc, out in procs:
        if proc.wait() != 0:
            failed.append(f"{arm} (exit {proc.returncode}, see {out.name})")
        out.close()
        if own.is_file():
            archive(f"sqlite:///{own}", "", storage_file)
    if failed:
        raise AutopruneError(f"seed {seed}: arm(s) {', '.join(failed)} failed")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None, trial_fn: Callable[..., Any] | None = None, executor: Any = None) -> None:
    """The benchmark; ``trial_fn``/``executor`` replace the real trials and Ray (tests only)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--phases", default="search,correlation,report,archive", help=f"from {', '.join(PHASES)}")
    ap.add_argument("--minutes", type=float, default=None,
                    help=f"wall time of each arm at each seed (search: default {DEFAULT_MINUTES:g}; report: default "
                         f"the minutes each arm was run with)")
    ap.add_argument("--seeds", default="1,2,3", help="sampler seeds (at least 3 for the protocol)")
    ap.add_argument("--arms", default=",".join(ARMS), help="the arms the search phase runs (default: both)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="run the two arms of a seed at the same time, each with half the trials in flight")
    ap.add_argument("--trials-in-flight", type=int, default=None, help="each arm's trials in flight (default: the space's)")
    ap.add_argument("--in-process", action="store_true", help="run each arm's trials in its own process, no Ray")
    ap.add_argument("--config", default=None, help="run config replacing the space's (e.g. the finetuned checkpoint's)")
    ap.add_argument("--rungs", default=None, metavar="YAML",
                    help="the mf arm's rungs instead of the space's, as a YAML list, e.g. \"[{retrain_steps: 0, "
                         "reconstruct: least_squares}, {retrain_steps: full}]\" (default: the space's own)")
    ap.add_argument("--promote-fraction", type=float, default=None, help="with --rungs: the mf arm's promote_fraction")
    ap.add_argument("--storage", default=None, help="default: sqlite:///<run_dir>/bench_multifidelity.db")
    ap.add_argument("--archive", type=Path, default=ARCHIVE, help="SQLite file the archive phase writes")
    add_results_option(ap, "multifidelity")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    if set(phases) - set(PHASES):
        raise AutopruneError(f"--phases: unknown phase(s) {', '.join(sorted(set(phases) - set(PHASES)))}; "
                             f"choose from {', '.join(PHASES)}")
    seeds = parse_ints(args.seeds, "--seeds")
    arms = tuple(a for a in args.arms.split(",") if a)
    if "search" in phases and args.minutes is None:
        args.minutes = DEFAULT_MINUTES
    if not seeds or (args.minutes is not None and not args.minutes > 0) or not arms or set(arms) - set(ARMS):
        raise AutopruneError(f"give --seeds (e.g. 1,2,3), --minutes > 0 and --arms from {', '.join(ARMS)}")
    space = load_search_space(args.space)
    if args.rungs is not None or args.promote_fraction is not None:
        space = with_rungs(Path(args.space), args.rungs, args.promote_fraction)
    if args.config:
        space = space.model_copy(update={"config": str(Path(args.config).resolve())})
        space.run_config()  # a bad file is one clear error now
    if args.in_process and executor is None:
        from autoprune.search import InProcessExecutor

        executor = InProcessExecutor()
    run_dir = Path(space.run_config().run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{run_dir / 'bench_multifidelity.db'}"
    if trial_fn is None and {"search", "correlation"} & set(phases):
        from autoprune.train import ensure_baseline

        ensure_baseline(space.run_config())  # trained (or loaded) before any arm's clock runs
    if "search" in phases and args.side_by_side and len(arms) == len(ARMS):
        if trial_fn is not None:
            raise AutopruneError("--side-by-side runs the real trials in subprocesses")
        if not storage.startswith("sqlite:///"):
            raise AutopruneError("--side-by-side collects the arms into a SQLite --storage (sqlite:///FILE)")
        base = ["-c", args.space, "--minutes", str(args.minutes)]
        base += (["--config", args.config] if args.config else []) + (["--in-process"] if args.in_process else [])
        base += ["--rungs", args.rungs] if args.rungs is not None else []
        base += ["--promote-fraction", str(args.promote_fraction)] if args.promote_fraction is not None else []
        base += ["--trials-in-flight", str(max(1, space.trials_in_flight // len(ARMS)))]
        for seed in seeds:
            run_side_by_side(base, seed, run_dir, Path(storage[len("sqlite:///"):]))
    elif "search" in phases:
        for seed, arm in rotated_plan(seeds, arms):
            run_arm(space, arm, seed, storage, args.minutes, trial_fn=trial_fn, executor=executor,
                    trials_in_flight=args.trials_in_flight)
    if "correlation" in phases:
        score_rung0(space, storage, seeds, trial_fn=trial_fn)
    if "report" in phases:
        text, numbers = search_report(storage, seeds, args.minutes)
        print(text)
        write_results(args, "search", numbers)
        text, numbers = correlation_report(storage, seeds)
        print(text)
        if numbers:
            write_results(args, "correlation", numbers)
    if "archive" in phases:
        for n in archive(storage, "", args.archive):
            log.info("archived study %s in %s", n, args.archive)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(main, log)
