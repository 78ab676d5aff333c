#!/usr/bin/env python
"""Orchestration overhead of the search (driver + Ray + SQLite storage) with fixed-length fake trials.

Method: one local Ray (2 CPUs) is started once (its start-up time is reported separately); then
for each trial length S (default 2 s and 10 s) and each number of trials in flight k (1 and 2), a
fresh study runs N trials of ``sleep_trial`` (sleeps exactly S seconds, fixed metrics) through the
real driver: ask -> sample policy -> Ray task -> tell + user attrs, lease heartbeat running.
Reported per configuration:

* wall: driver time from the first ask to the last tell;
* ideal: ceil(N / k) * S, the wall time with zero overhead;
* overhead/trial: (wall - ideal) / ceil(N / k) - the per-wave orchestration cost;
* overhead %: (wall - ideal) / wall;
* trials/hour: N / wall * 3600 (and the ideal 3600 * k / S).

The space is ``search_spaces/quickstart.yaml`` with its run directory in a temporary folder: the driver
reads the model's config (its depth) and nothing else, since the fake trials load no model or data.
The table is printed and written to ``docs/results/search_overhead.json``.

Usage:
    .venv/bin/python benchmarks/search_overhead.py                 # S in {2, 10}, k in {1, 2}
    .venv/bin/python benchmarks/search_overhead.py --lengths 2 --trials 6
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, add_results_option, run, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[2.0, 10.0], help="fake trial seconds")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--trials", type=int, default=None, help="trials per run (default: 8 for <5 s, else 4)")
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "quickstart.yaml"),
                    help="search space whose model config the driver reads (default: the quick start's)")
    add_results_option(ap, "search_overhead")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)

    import ray

    from autoprune.search import load_search_space, run_search, space_from_dict
    from autoprune.study import trial_records
    from autoprune.testing import sleep_trial

    base = load_search_space(args.space)  # validates the file; its run config is taken as it is
    tmp = Path(tempfile.mkdtemp(prefix="ap_bench_"))
    cfg = base.run_config().model_dump(mode="json")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=max(args.in_flight), include_dashboard=False, configure_logging=False,
             log_to_driver=False, _temp_dir=str(tmp / "ray"), _node_ip_address="127.0.0.1")
    ray_start = time.perf_counter() - t0
    print(f"method: fake trials sleeping S seconds, real driver (ask/tell, Ray tasks, SQLite, lease heartbeat); "
          f"local Ray with {max(args.in_flight)} CPUs started once in {ray_start:.1f} s (not counted below)")
    print(f"{'S (s)':>6} {'k':>2} {'N':>3} {'wall (s)':>9} {'ideal (s)':>9} {'ovh/trial (s)':>13} {'ovh %':>6} "
          f"{'trials/h':>9} {'ideal/h':>8} {'call (s)':>8}")
    rows = []
    try:
        for S in args.lengths:
            n = args.trials or (8 if S < 5 else 4)
            for k in args.in_flight:
                name = f"bench_{S:g}s_k{k}"
                space = space_from_dict({"config": dict(cfg, run_dir=str(tmp / "runs")), "n_trials": n,
                                         "trials_in_flight": k, "sampler": "random", "accuracy_drop_floor": None,
                                         "criteria": ["l1"]}, name)
                t1 = time.perf_counter()
                study = run_search(space, study_name=name, trial_fn=functools.partial(sleep_trial, sleep=S),
                                   dense_metrics={"accuracy": 0.9}, progress=False)
                wall = time.perf_counter() - t1
                trials = trial_records(study)
                first = min(t.datetime_start for t in trials if t.datetime_start)
                last = max(t.datetime_complete for t in trials if t.datetime_complete)
                loop = (last - first).total_seconds()
                waves = math.ceil(n / k)
                ideal = waves * S
                per_trial = [t.duration_s - S for t in trials if t.duration_s is not None]
                r = {"S": S, "k": k, "N": n, "wall_s": loop, "call_s": wall, "ideal_s": ideal,
                     "overhead_per_trial_s": (loop - ideal) / waves, "overhead_frac": (loop - ideal) / loop,
                     "trials_per_hour": n / loop * 3600, "ideal_trials_per_hour": 3600 * k / S,
                     "mean_trial_latency_overhead_s": sum(per_trial) / len(per_trial)}
                rows.append(r)
                print(f"{S:>6g} {k:>2} {n:>3} {loop:>9.2f} {ideal:>9.1f} {r['overhead_per_trial_s']:>13.3f} "
                      f"{100 * r['overhead_frac']:>5.1f}% {r['trials_per_hour']:>9.0f} {r['ideal_trials_per_hour']:>8.0f} "
                      f"{wall:>8.2f}")
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print("wall: first trial start to last trial end as stored in the study; call: the whole run_search call "
          "(study creation, lease, attrs, the trials)")
    write_results(args, "overhead", {"ray_start_s": ray_start, "rows": rows})


if __name__ == "__main__":
    run(main, logging.getLogger("benchmarks.search_overhead"))
