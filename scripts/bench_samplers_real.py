#!/usr/bin/env python
"""Samplers side by side on real trials of a cheap space: random search, TPE and GP, many seeds.

The reference comparison (``scripts/bench_minilm_sst2.py --phases replicate``) costs about 2 h 20 min
per seed pair on this machine, too much to try a sampler at many seeds. This runs each sampler on a
space whose trials take seconds (default: ``search_spaces/quickstart.yaml``, real MiniLM-L6 trials on
a 4,000-row SST-2 subset, scored on 300 validation rows) through the real driver, Ray workers and
early stop, at several sampler seeds:

* every sampler gets the same ``--n-trials`` per seed and the same ``--startup`` random trials
  (TPE and GP; the reference space uses 10 of 28, about a third, which is the default here);
* seeds run one after another, the samplers of a seed back to back in an order rotated per seed,
  so that load on this shared machine drifts over all samplers alike;
* each study's front is scored by the hypervolume of (validation accuracy, speedup) above the
  reference point (dense validation accuracy minus 5 points, speedup 1.0), the same measure as the
  reference benchmark; the report gives it per seed, the ratio of each sampler's mean to random
  search's mean, and in how many seeds each sampler beat random search.

It is not the reference benchmark: a smaller space, shorter retraining and a 300-row validation set
(one sentence is 0.33 points). It answers one question the surrogate (``bench_sampler_surrogate.py``)
could only estimate: on real trials, does a model-based sampler beat random search at a budget of a
few dozen trials, and which one.

Resumable: all studies live in ``<run_dir>/bench_samplers_real.db`` (named ``<sampler>_seed<N>``);
re-running the same command continues and never re-runs a finished trial.

    .venv/bin/python scripts/bench_samplers_real.py [--seeds 1,2,3,4,5,6] [--n-trials 18]
        [--samplers random,tpe,gp] [-c search_spaces/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_minilm_sst2 import REF_MARGIN, completed_in_first, reference_point, results_hypervolume  # noqa: E402

from autoprune import _study as S  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.search import load_search_space, open_study, run_search  # noqa: E402

log = logging.getLogger("bench_samplers_real")
SAMPLERS = ("random", "tpe", "gp", "nsga2")


def plan(seeds: list[int], samplers: list[str]) -> list[tuple[int, str]]:
    """(seed, sampler) in run order: seed by seed, the samplers rotated by one place per seed.

    >>> plan([1, 2], ["random", "tpe", "gp"])
    [(1, 'random'), (1, 'tpe'), (1, 'gp'), (2, 'tpe'), (2, 'gp'), (2, 'random')]
    """
    out = []
    for i, seed in enumerate(seeds):
        k = i % len(samplers)
        out += [(seed, s) for s in samplers[k:] + samplers[:k]]
    return out


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--seeds", default="1,2,3,4,5,6")
    ap.add_argument("--n-trials", type=int, default=18)
    ap.add_argument("--startup", type=int, default=None, help="random trials before TPE / GP model the "
                    "front (default: a third of --n-trials)")
    ap.add_argument("--samplers", default="random,tpe,gp")
    ap.add_argument("--storage", default=None, help="default: sqlite:///<run_dir>/bench_samplers_real.db")
    args = ap.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise AutopruneError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 1,2,3") from None
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if not seeds or not samplers or set(samplers) - set(SAMPLERS) or "random" not in samplers:
        raise AutopruneError(f"--samplers {args.samplers!r} / --seeds {args.seeds!r}: give at least one seed and "
                             f"samplers from {', '.join(SAMPLERS)}, random search included (the ratios are to it)")
    if args.n_trials < 2:
        raise AutopruneError("--n-trials must be at least 2")
    startup = args.startup if args.startup is not None else max(1, args.n_trials // 3)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    space = load_search_space(args.space)
    run_dir = Path(space.run_config().run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{run_dir / 'bench_samplers_real.db'}"

    wall: dict[str, float] = {s: 0.0 for s in samplers}
    for seed, sampler in plan(seeds, samplers):
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
            study = open_study(storage, f"{sampler}_seed{seed}")
            if ref is None:
                ref = reference_point(study.user_attrs[S.ATTR_DENSE]["accuracy"])
            hv[sampler][seed] = results_hypervolume(completed_in_first(study, args.n_trials), ref)
            row.append(f"{hv[sampler][seed]:.5f}")
        lines.append(f"| {seed} | " + " | ".join(row) + " |")
    print(f"\nbench_samplers_real on {args.space}: {args.n_trials} trials per study, {startup} startup trials "
          f"(TPE, GP), seeds {','.join(map(str, seeds))}; storage {storage}")
    print(f"reference point: dense validation accuracy - {REF_MARGIN} = {ref[0]:.4f}, speedup 1.0; wall time of the "
          "studies run by this invocation: " + ", ".join(f"{s} {wall[s] / 60:.1f} min" for s in samplers) + "\n")
    print("| seed | " + " | ".join(samplers) + " |")
    print("|---:|" + "---:|" * len(samplers))
    print("\n".join(lines) + "\n")
    print("\n".join(summarise(hv)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log.warning("interrupted: finished trials are in the study storage; re-run the same command to continue")
        sys.exit(130)
    except AutopruneError as e:
        sys.exit(f"error: {e}")
