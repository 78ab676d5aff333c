"""Read across the archived multi-fidelity protocol runs: the top rung's re-fit against the same policy
as sampled, and the rank correlation over every distinct random policy.

No trial runs here; it reads the committed studies (``docs/data/multifidelity*_studies.db``):

* ``refit``: where both arms of a seed ran the same policy (the mf arm's top rung, re-fitted by least
  squares before the full retraining; the random arm as sampled), the two validation accuracies.
  Trials are deterministic on one CPU, so the difference is the re-fit's.
* ``replay``: the order in which each mf arm would have promoted its rung-0 policies with the
  hypervolume contribution above the reference point as the tie-break instead of crowding distance
  (runs with two rungs; the rung-0 sequence does not depend on the promotion rule; a policy the run did not promote has no
  top-rung result, so only the changed promotions are listed);
* ``also_final``: each two-rung mf arm's hypervolume with its promoted cuts also on its front as rung 0
  ran them (``also_final``): for every policy it promoted whose full-budget run started within the
  arm's minutes and whose rung-0 accuracy met the search's floor, the point (rung-0 accuracy, the top
  rung's measured speedup of the same architecture; the screened one where the top rung was stopped),
  beside the arm's own top-rung results, against the random arm's hypervolume. It leaves out what
  those extra trials would cost (seconds each: no retraining, but a full timing) and cannot replay
  what the sampler would then have done;
* ``correlation``: the ``correlation`` studies of the runs (rung-0 against full-budget accuracy of the
  random arms' policies), one pair per distinct policy (the latest run's, where seeds repeat a draw);
  also within each granularity (structured, unstructured), whose rung 0 differs: only structured
  policies are re-fitted there.

    .venv/bin/python benchmarks/mf_archives.py docs/data/multifidelity_studies.db \\
        docs/data/multifidelity2_studies.db docs/data/multifidelity3_studies.db
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
from benchmarks.common import add_results_option, run, write_results  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402

log = logging.getLogger("benchmarks.mf_archives")


def _key(policy: dict[str, Any]) -> str:
    """A policy without its seed and reconstruction: what both arms share when they ran the same draw."""
    return json.dumps({k: v for k, v in policy.items() if k not in ("seed", "reconstruct")}, sort_keys=True)


def refit_pairs(url: str) -> list[dict[str, Any]]:
    import optuna

    names = set(optuna.get_all_study_names(url))
    out = []
    for name in sorted(n for n in names if n.startswith("mf_seed") and "." not in n):
        seed = name[len("mf_seed"):]
        if f"random_seed{seed}" not in names:
            continue
        rnd = optuna.load_study(study_name=f"random_seed{seed}", storage=url)
        by_key = {_key(t.user_attrs["policy"]): t for t in rnd.trials if t.values}
        for t in optuna.load_study(study_name=name, storage=url).trials:
            r = by_key.get(_key(t.user_attrs.get("target_policy") or {})) if t.values else None
            if r is not None and t.user_attrs["policy"].get("reconstruct", "none") != "none":
                out.append({"seed": int(seed), "policy": t.user_attrs["policy_summary"], "refit": t.values[0],
                            "as_sampled": r.values[0], "difference": t.values[0] - r.values[0]})
    return out


def _order_by_hv_contribution(points: list[tuple[float, ...]], ref: tuple[float, float]) -> list[int]:
    from autoprune.search import _promotion as P
    from autoprune.study import hypervolume

    ranks = P.non_dominated_ranks(points)
    crowd: dict[int, float] = {}
    contrib: dict[int, float] = {}
    for r in set(ranks):
        members = [i for i, x in enumerate(ranks) if x == r]
        crowd.update(P.crowding_distances(points, members))
        full = hypervolume([points[i] for i in members], ref)
        contrib.update({i: full - hypervolume([points[j] for j in members if j != i], ref) for i in members})
    return sorted(range(len(points)), key=lambda i: (ranks[i], -contrib[i], -crowd[i], i))


def replay_promotions(url: str) -> list[dict[str, Any]]:
    import optuna

    from autoprune.search import _promotion as P
    from autoprune.study import reference_point

    names = set(optuna.get_all_study_names(url))
    out = []
    for name in sorted(n for n in names if n.startswith("mf_seed") and "." not in n):
        top = optuna.load_study(study_name=name, storage=url)
        if len(top.user_attrs.get("rung_studies") or []) != 1:  # two rungs only: rung 0 promotes to the top
            continue
        ref = reference_point(top.user_attrs["dense"]["validation_accuracy"])
        r0 = sorted((t for t in optuna.load_study(study_name=f"{name}.rung0", storage=url).trials if t.values),
                    key=lambda t: t.datetime_complete)
        ran = [t for t in top.trials if t.state.name in ("COMPLETE", "PRUNED")
               and "source_trial" in t.user_attrs]  # promotions (also_final runs of a cut name no source)
        outcome = {t.user_attrs["source_trial"]: (t.values[0] if t.values else "stopped") for t in ran}
        fraction = top.user_attrs["space"]["promote_fraction"]
        picked: dict[str, list[int]] = {}
        for rule, order in (("crowding", P.order), ("hypervolume", lambda pts: _order_by_hv_contribution(pts, ref))):
            seen: list[int] = []
            for n in range(1, len(r0) + 1):
                pts = [tuple(t.values) for t in r0[:n]]
                for i in order(pts)[:P.quota(n, fraction, closed=False)]:
                    if r0[i].number not in seen:
                        seen.append(r0[i].number)
            picked[rule] = seen[:len(ran)]
        values = {t.number: t.values for t in r0}
        out.append({"study": name, "top_rung_trials": len(ran), **picked,
                    "dropped": [{"rung0": values[n], "top": outcome.get(n)}
                                for n in picked["crowding"] if n not in picked["hypervolume"]],
                    "added": [{"rung0": values[n]} for n in picked["hypervolume"] if n not in picked["crowding"]]})
    return out


def replay_also_final(url: str) -> list[dict[str, Any]]:
    import optuna

    from autoprune.search import open_study
    from autoprune.study import hypervolume, rungs, study_info, trial_records
    from benchmarks import multifidelity as M

    out = []
    names = set(optuna.get_all_study_names(url))
    for name in sorted(n for n in names if n.startswith("mf_seed") and "." not in n):
        st = open_study(url, name)
        levels = rungs(st)
        seed = int(name[len("mf_seed"):])
        if len(levels) != 2 or f"random_seed{seed}" not in names or M.ATTR_SEGMENTS not in st.user_attrs:
            continue  # not a two-rung arm, no random twin, or an arm archived before it finished (no arm times)
        segments, budget_s = st.user_attrs[M.ATTR_SEGMENTS], float(st.user_attrs[M.ATTR_BUDGET]) * 60
        ref, floor = M.study_reference(st), study_info(st).accuracy_floor
        own = [r for _, r in M.scored(levels[1].records, segments, budget_s)]
        below = {r.number: r for r in levels[0].records}
        cuts = []
        for r in levels[1].records:
            src = below.get(r.source_trial) if r.source_trial is not None else None
            if (src is None or not src.complete or (floor is not None and src.accuracy < floor)
                    or r.datetime_start is None or M.arm_seconds(segments, r.datetime_start.timestamp()) > budget_s):
                continue
            cuts.append((src.accuracy, r.speedup if r.complete else src.speedup))
        pts = [(r.accuracy, r.speedup) for r in own]
        rnd = open_study(url, f"random_seed{seed}")
        rnd_pts = M.scored(trial_records(rnd), rnd.user_attrs[M.ATTR_SEGMENTS],
                           float(rnd.user_attrs[M.ATTR_BUDGET]) * 60)
        hv_rnd = hypervolume([r for _, r in rnd_pts], ref)
        hv_own, hv_with = hypervolume(pts, ref), hypervolume(pts + cuts, ref)
        out.append({"study": name, "seed": seed, "cuts": cuts, "hypervolume": hv_own, "with_cuts": hv_with,
                    "random": hv_rnd, "ratio": hv_own / hv_rnd, "ratio_with_cuts": hv_with / hv_rnd})
    return out


def correlation_pairs(url: str) -> dict[str, tuple[float, float, str]]:
    import optuna

    if "correlation" not in optuna.get_all_study_names(url):
        return {}
    st = optuna.load_study(study_name="correlation", storage=url)
    # keyed by the full-budget policy's summary (the stored policy is its rung-0 form, without retraining)
    return {t.user_attrs["summary"]: (t.values[0], t.user_attrs["full_accuracy"],
                                      t.user_attrs["policy"].get("granularity", "structured")) for t in st.trials}


def main(argv: list[str] | None = None) -> None:
    from scipy.stats import kendalltau, spearmanr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archives", nargs="+", type=Path, help="archived protocol studies, oldest first")
    add_results_option(ap, "mf_archives")
    args = ap.parse_args(argv)
    for p in args.archives:
        if not p.is_file():
            raise AutopruneError(f"{p}: no such study file; give the docs/data/multifidelity*_studies.db files")
    pairs, corr, replays, finals = [], {}, [], []
    for p in args.archives:
        url = f"sqlite:///{p}"
        pairs += [dict(x, run=p.name) for x in refit_pairs(url)]
        replays += [dict(x, run=p.name) for x in replay_promotions(url)]
        finals += [dict(x, run=p.name) for x in replay_also_final(url)]
        corr.update(correlation_pairs(url))  # a later run's pair replaces an earlier one's
    diffs = [x["difference"] for x in pairs]
    a0, af = [v[0] for v in corr.values()], [v[1] for v in corr.values()]
    by_granularity = {}
    for g in sorted({v[2] for v in corr.values()}):
        xs = [v for v in corr.values() if v[2] == g]
        by_granularity[g] = {"n": len(xs), "spearman": float(spearmanr([x[0] for x in xs], [x[1] for x in xs])[0])
                             if len(xs) > 2 else None}
    numbers = {
        "refit": {"n": len(pairs), "mean": statistics.mean(diffs) if diffs else None,
                  "median": statistics.median(diffs) if diffs else None, "pairs": pairs},
        "replay": replays,
        "also_final": {"seeds": finals,
                       "mean_ratio": statistics.mean(x["ratio"] for x in finals) if finals else None,
                       "mean_ratio_with_cuts": statistics.mean(x["ratio_with_cuts"] for x in finals) if finals else None},
        "correlation": {"n_distinct": len(corr), "spearman": float(spearmanr(a0, af)[0]) if len(corr) > 2 else None,
                        "kendall": float(kendalltau(a0, af)[0]) if len(corr) > 2 else None,
                        "by_granularity": by_granularity},
    }
    print("| run | seed | policy | re-fit, retrained | as sampled, retrained | difference |\n|---|---:|---|---:|---:|---:|")
    for x in pairs:
        print(f"| {x['run']} | {x['seed']} | {x['policy'][:60]} | {x['refit']:.4f} | {x['as_sampled']:.4f} | "
              f"{x['difference']:+.4f} |")
    if diffs:
        print(f"re-fit at the top rung: {len(diffs)} pairs, mean {statistics.mean(diffs):+.4f}, "
              f"median {statistics.median(diffs):+.4f}")
    c = numbers["correlation"]
    if c["spearman"] is not None:
        print(f"rung 0 against full budget over {c['n_distinct']} distinct random policies: Spearman "
              f"{c['spearman']:+.3f}, Kendall {c['kendall']:+.3f}; within one granularity: "
              + ", ".join(f"{g} {x['spearman']:+.3f} ({x['n']})" for g, x in c["by_granularity"].items()
                          if x["spearman"] is not None))
    for x in replays:
        drops = ", ".join(f"{d['rung0'][0]:.3f} -> {d['top'] if isinstance(d['top'], str) else round(d['top'], 4)}"
                          for d in x["dropped"])
        print(f"{x['run']} {x['study']}: hypervolume tie-break drops [{drops}], adds "
              f"{[round(a['rung0'][0], 3) for a in x['added']]} (rung-0 accuracy -> top rung)")
    if finals:
        print("| run | seed | mf / random as run | with the promoted cuts as rung 0 ran them | cuts added |\n"
              "|---|---:|---:|---:|---:|")
        for x in finals:
            print(f"| {x['run']} | {x['seed']} | {x['ratio']:.2f}x | {x['ratio_with_cuts']:.2f}x | {len(x['cuts'])} |")
        a = numbers["also_final"]
        print(f"mean ratio {a['mean_ratio']:.2f}x as run, {a['mean_ratio_with_cuts']:.2f}x with the cuts")
    write_results(args, "archives", numbers)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(main, log)
