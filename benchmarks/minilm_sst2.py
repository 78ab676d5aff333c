"""Reference benchmark: the MiniLM-L6 / SST-2 search against random search and a uniform sweep.

Every phase is resumable (all results live in Optuna studies in one SQLite file), so the script
can be stopped and re-run; finished work is never recomputed.

1. ``search``: the search of ``search_spaces/minilm_sst2.yaml`` (its sampler: TPE), ``--n-trials`` trials;
2. ``random``: the same space with Optuna's RandomSampler, the same number of trials;
3. ``uniform``: the sweep a user would try by hand: uniform L1 head+FFN sparsity of 25/50/75%, with the
   space's middle retraining budget;
4. ``report``: hypervolume of each accuracy/speedup front (reference point: dense validation accuracy
   minus 5 points, speedup 1.0) and the ratios search/random and search/sweep; which criterion wins at
   which speedup; the search's front exported (``autoprune export``), re-measured on the *test* split and
   timed interleaved against the dense baseline (batch 32 x 64);
5. ``dashboard``: the search's dashboard as ``dashboards/minilm_sst2.html`` and ``.png``;
6. ``archive``: every study of this protocol copied into ``docs/data/minilm_sst2_studies.db``, a record of
   the trials behind the numbers that can be committed (``runs/`` is not).

Not in the default phases: ``replicate`` runs search and random search again at the sampler seeds of
``--seeds`` (studies named like the reference ones plus ``_seed<N>``), and ``seeds-report`` writes
their hypervolumes, seed by seed.

``report`` and ``seeds-report`` write their sections of ``docs/BENCHMARKS.md`` (between the markers
``<!-- minilm_sst2:begin -->`` / ``:end -->`` and ``<!-- minilm_sst2_seeds:begin -->`` / ``:end -->``),
print them, and write the same numbers to ``docs/results/minilm_sst2.json``.

    .venv/bin/python benchmarks/minilm_sst2.py [--n-trials 60] [--phases search,random,uniform,report,dashboard,archive]
    .venv/bin/python benchmarks/minilm_sst2.py --n-trials 28 --phases replicate,seeds-report,archive --seeds 1000,2000
    .venv/bin/python benchmarks/minilm_sst2.py --n-trials 28 --phases seeds-report --seeds 1000,2000 \
        --storage sqlite:///docs/data/minilm_sst2_studies.db   # the report again, from an archived copy
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ROOT, add_results_option, hypervolume_first, parse_ints, run, study_reference,  # noqa: E402
                               write_block, write_results)

from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.search import load_search_space, run_search  # noqa: E402
from autoprune.study import (completed_trials, counted_trials, create_study, front, hypervolume, load_study,  # noqa: E402
                             record_result, reference_point, study_info)

log = logging.getLogger("benchmarks.minilm_sst2")
BEGIN, END = "<!-- minilm_sst2:begin -->", "<!-- minilm_sst2:end -->"


def run_uniform(space: Any, storage: str, name: str) -> Any:
    """The hand-made sweep, stored as a study so it is resumable and read like the others."""
    from autoprune.models import model_depth
    from autoprune.policy import PruningPolicy, RetrainBudget
    from autoprune.trial import run_trial

    cfg = space.run_config()
    depth = model_depth(cfg)
    steps = space.retrain.steps if isinstance(space.retrain.steps, int) else sorted(space.retrain.steps)[
        len(space.retrain.steps) // 2]
    lr = space.retrain.learning_rate if isinstance(space.retrain.learning_rate, float) else 5e-5
    study = create_study(name, storage)
    done = {json.dumps(r.policy, sort_keys=True) for r in completed_trials(study)}
    for s in (0.25, 0.5, 0.75):
        pol = PruningPolicy.uniform("l1", depth, heads=s, ffn=s).model_copy(
            update={"retrain": RetrainBudget(steps=steps, learning_rate=lr)})
        if json.dumps(pol.to_dict(), sort_keys=True) in done:
            continue
        log.info("hand-made: %s", pol.summary())
        t0 = time.perf_counter()
        res = run_trial(cfg, pol)
        record_result(study, pol, res, wall_seconds=time.perf_counter() - t0)
    return study


def _table(header: list[str], align: str, rows: list[list[Any]]) -> list[str]:
    """Markdown table lines; ``align`` has one character per column: l (left) or r (right)."""
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", sep] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def report(space: Any, storage: str, names: dict[str, str], out_md: Path, export_dir: Path, wall: dict,
           n_target: int) -> tuple[str, dict[str, Any]]:
    """The report's markdown (also written into ``out_md``) and the same numbers as a JSON-able dict."""
    from autoprune.export import export_trial
    from autoprune.serialization import load_pruned
    from autoprune.measure import evaluate_split, measure_speed
    from autoprune.models import load_model
    from autoprune.train import ensure_baseline, load_baseline_metrics, load_task_data, load_tokenizer

    cfg = space.run_config()
    studies = {k: load_study(storage=storage, study_name=n) for k, n in names.items() if _exists(storage, n)}
    main = studies["search"]
    dense_attrs = study_info(main).dense
    dense_val = dense_attrs.get("accuracy")
    bdir = ensure_baseline(cfg)
    bm = load_baseline_metrics(bdir)
    ref = reference_point(dense_val if dense_val is not None else bm["validation_accuracy"])
    out: dict[str, Any] = {"reference_point": list(ref), "dense": {
        "steps": bm["steps"], "test_accuracy": bm.get("test_accuracy"), "test_n": bm.get("test_n"),
        "validation_accuracy": dense_val or bm["validation_accuracy"],
        "validation_n": dense_attrs.get("validation_n", bm.get("validation_n")), "train_seconds": bm["train_seconds"]}}
    lines = [BEGIN, "### Report (generated)", "",
             f"Command: `.venv/bin/python benchmarks/minilm_sst2.py` · machine: {platform.machine()}, "
             f"{platform.platform()}; latency at 1 intra-op thread, interleaved against dense · generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Dense baseline: {bm['steps']} steps at batch {bm['settings']['batch_size']} "
             f"(lr {bm['settings']['learning_rate']}), **test accuracy {bm.get('test_accuracy', float('nan')):.4f}** "
             f"(n={bm.get('test_n')}), validation {out['dense']['validation_accuracy']:.4f} "
             f"(n={out['dense']['validation_n']}, the rows trials are scored on"
             f"{'' if cfg.data.min_validation_words is None else f': {cfg.data.min_validation_words}+ words'}); "
             f"trained in {bm['train_seconds'] / 60:.0f} min.", ""]
    n_counted = {k: len(counted_trials(st)) for k, st in studies.items()}
    status = {k: f"{n_counted[k]} of {n_target if k != 'uniform' else 3} trials finished" for k in studies}
    missing = [k for k in names if k not in studies]
    lines += ["**Status of this report:** " + "; ".join(f"{k}: {v}" for k, v in status.items())
              + (f"; not run yet: {', '.join(missing)}" if missing else "")
              + ". Numbers below cover only what has finished; re-run the script to continue.", ""]
    n_same = min(n_counted[k] for k in ("search", "random") if k in studies)
    lines += ["#### Hypervolume of the accuracy/speedup front (validation)", "",
              f"Reference point: dense validation accuracy - 5 points ({ref[0]:.4f}), speedup 1.0. Search and "
              f"random search are compared at the same trial count: their first {n_same} finished trials.", ""]
    samplers = {"search": space.sampler, "random": "random", "uniform": "none (fixed sweep)"}
    out["studies"] = {}
    rows = []
    for k, st in studies.items():
        row = {"name": names[k], "sampler": samplers[k], "counted": n_counted[k],
               "completed": len(completed_trials(st)), "front_size": len(front(st)),
               "hypervolume": hypervolume(st, ref), "hypervolume_first": hypervolume_first(st, n_same, ref),
               "wall_minutes": study_wall(st) / 60}
        out["studies"][k] = row
        rows.append([f"{k} ({names[k]})", row["sampler"], row["completed"], row["front_size"],
                     f"{row['hypervolume']:.5f}", f"{row['hypervolume_first']:.5f}", f"{row['wall_minutes']:.0f} min"])
    lines += _table(["study", "sampler", "completed trials", "front size", "hypervolume",
                     f"hypervolume, first {n_same} trials", "wall time"], "llrrrrr", rows)
    hv = {k: v["hypervolume"] for k, v in out["studies"].items()}
    hv_same = {k: v["hypervolume_first"] for k, v in out["studies"].items()}
    out["compared_at"] = n_same
    if hv_same.get("random", 0) > 0:
        out["search_over_random"] = hv_same["search"] / hv_same["random"]
        lines.append(f"\nsearch / random at {n_same} trials each: **{out['search_over_random']:.2f}x** "
                     "(target >= 1.1x)")
    if hv.get("uniform", 0) > 0:
        out["search_over_uniform"] = hv["search"] / hv["uniform"]
        lines.append(f"\nsearch (all its trials) / uniform L1 sweep (3 policies): "
                     f"**{out['search_over_uniform']:.2f}x** (target >= 1.1x)")
    done = [r for st in studies.values() for r in completed_trials(st)]
    bins = (1.25, 1.5, 2.0, 2.5, 3.0)
    out["criteria"] = {}
    crit_rows = []
    from autoprune.criteria import criterion_names

    for crit in criterion_names():
        rs = [r for r in done if r.criterion == crit]
        best = [max((r.accuracy for r in rs if r.speedup >= b), default=None) for b in bins]  # type: ignore[operator]
        out["criteria"][crit] = {"trials": len(rs), "best_accuracy_at": dict(zip(map(str, bins), best))}
        crit_rows.append([crit, *("-" if v is None else f"{v:.4f}" for v in best), len(rs)])
    lines += ["", "#### Which criterion wins at which speedup (best validation accuracy, all studies)", ""]
    lines += _table(["criterion", *(f">= {b:g}x" for b in bins), "trials"], "llllllr", crit_rows)
    lines += phase_profile([r.result for r in done if r.result])
    # the front, exported and re-measured on the test split
    tok = load_tokenizer(cfg)
    task = load_task_data(cfg, tok)
    dense = load_model(str(bdir)).eval()
    dense_test = evaluate_split(dense, task.test, batch_size=128, pad_id=task.pad_token_id,
                                num_labels=task.num_labels).accuracy
    out["dense_test_accuracy"] = dense_test
    out["front"] = []
    front_rows = []
    for t in front(main):
        d = export_dir / f"trial{t.number}"
        if not (d / "policy.yaml").is_file():
            export_trial(main, {"trial": t.number}, d)
        model = load_pruned(d)
        acc = evaluate_split(model, task.test, batch_size=128, pad_id=task.pad_token_id,
                             num_labels=task.num_labels).accuracy
        sp = measure_speed(dense, model, batch_size=32, seq_len=64, threads=1, repeats=15, batch1=False)
        r = t.result or {}
        p = r["policy"]
        row = {"trial": t.number, "criterion": p["criterion"], "granularity": p.get("granularity", "structured"),
               "distillation": bool(p.get("distillation")), "int8": bool(p.get("quantize")), "policy": t.summary,
               "heads_per_layer": r["heads_per_layer"], "ffn_per_layer": r["ffn_per_layer"],
               "validation_accuracy": r["accuracy"], "test_accuracy": acc, "test_drop_points": 100 * (dense_test - acc),
               "speedup_b32x64": sp.speedup, "flops_reduction": r["flops_reduction"], "params": r["params"]}
        out["front"].append(row)
        front_rows.append([t.number, row["criterion"], row["granularity"], "yes" if row["distillation"] else "no",
                           "yes" if row["int8"] else "no", row["policy"], row["heads_per_layer"], row["ffn_per_layer"],
                           f"{row['validation_accuracy']:.4f}", f"{acc:.4f}", f"{row['test_drop_points']:.2f}",
                           f"{sp.speedup:.2f}x", f"{r['flops_reduction']:.2f}x",
                           f"{sp.speedup / r['flops_reduction']:.2f}", f"{r['params']:,}"])
    lines += ["", "#### The search's front, exported and re-measured on the test split", ""]
    lines += _table(["trial", "criterion", "granularity", "distill", "int8", "policy (sparsity per layer, budget)",
                     "heads/layer", "FFN/layer", "val acc", "test acc", "test drop (pts)", "speedup b32x64",
                     "FLOPs red.", "speedup/FLOPs", "params"], "rlllllllrrrrrrr", front_rows)
    lines += ["", f"Dense test accuracy in this table: {dense_test:.4f}. Wall time of the phases run in this "
              f"invocation: " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in wall.items()) + ".", END]
    return write_block(out_md, "\n".join(lines), BEGIN, END), out


def write_reference_dashboard(storage: str, name: str, out_dir: Path) -> list[Path]:
    """The search study's dashboard as ``out_dir/minilm_sst2.html`` and, where headless Chromium is
    installed (``scripts/install_browser.sh``), a full-page ``minilm_sst2.png`` screenshot."""
    import os
    import shutil
    import subprocess
    import tempfile

    from autoprune.dashboard import write_dashboard

    out_dir.mkdir(parents=True, exist_ok=True)
    shown = storage.replace(f"sqlite:///{ROOT}/", "sqlite:///")  # export commands relative to the repo
    html = write_dashboard(load_study(storage=storage, study_name=name), out_dir / "minilm_sst2.html", storage=shown)
    written = [html]
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        log.warning("no chromium found: wrote %s without a PNG (bash scripts/install_browser.sh)", html)
        return written
    png = out_dir / "minilm_sst2.png"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-dev-shm-usage", f"--user-data-dir={tmp}",
                        "--virtual-time-budget=10000", "--hide-scrollbars", f"--screenshot={png}",
                        "--window-size=1400,2400", html.resolve().as_uri()],
                       capture_output=True, text=True, timeout=300, check=False)
    if png.is_file():
        written.append(png)
    else:
        log.warning("chromium did not write %s", png)
    return written


def phase_profile(results: list[dict[str, Any]]) -> list[str]:
    """Markdown: where a trial's time goes, by phase (medians over trials; max shows the first trial
    on a worker, which also tokenises the data and evaluates the dense model once)."""
    import statistics

    rows = [r.get("phase_seconds") or {} for r in results]
    rows = [r for r in rows if r.get("total")]
    if not rows:
        return []
    out = ["", f"#### Profile of a trial by phase ({len(rows)} completed trials, 1 thread each)", "",
           "| phase | median s | max s | share of median total |", "|---|---:|---:|---:|"]
    tot = statistics.median(r["total"] for r in rows)
    for ph in ("load", "prune", "retrain", "evaluate", "measure", "total"):
        v = [r.get(ph, 0.0) for r in rows]
        out.append(f"| {ph} | {statistics.median(v):.1f} | {max(v):.1f} | {100 * statistics.median(v) / tot:.0f}% |")

    def per_step(qat: bool) -> list[float]:
        return [r["phase_seconds"]["retrain"] / r["retrain_steps"] for r in results
                if (r.get("phase_seconds") or {}).get("retrain") and r.get("retrain_steps")
                and bool(r["policy"].get("qat")) == qat]

    plain, qat = per_step(False), per_step(True)
    if plain:
        out.append(f"\nRetraining: median {statistics.median(plain):.3f} s per step (batch 32, bucketed "
                   "padding, fused AdamW; distillation adds a teacher forward pass)"
                   + (f"; quantization-aware ({len(qat)} trials): {statistics.median(qat):.3f} s." if qat else "."))
    return out


def study_wall(study: Any) -> float:
    """Seconds during which at least one trial of the study was running: the union of the trials'
    [start, complete] intervals, so the gap between two invocations of a resumed study is not counted.
    The sweep's trials (``wall_seconds`` recorded) ran one after another: their times are summed."""
    from autoprune.study import trial_records

    ts = [r for r in trial_records(study) if r.datetime_start and r.datetime_complete]
    if any("wall_seconds" in r.user_attrs for r in ts):
        return sum(r.user_attrs.get("wall_seconds", 0.0) for r in ts)
    total, end = 0.0, None
    for start, stop in sorted((r.datetime_start, r.datetime_complete) for r in ts):
        if end is not None:
            start = max(start, end)  # the part already counted by an earlier, overlapping trial
        if stop > start:
            total += (stop - start).total_seconds()
            end = stop
    return total


# Bump when what a trial's objectives mean changes in code (protocol 2: an int8 policy's accuracy is
# measured after quantization; protocol 1 measured the float model; protocol 3: int8 weights are
# quantized per channel and an int8 model is scored one sentence at a time).
PROTOCOL = 3
_ADDED_SPACE_FIELDS = ("qat",)
_ADDED_DATA_FIELDS = ("exclude_train_overlap",)


def study_names(space: Any) -> dict[str, str]:
    """One set of studies per dense baseline and per trial protocol (the run config, the search space
    less ``n_trials``, and ``PROTOCOL``): a changed baseline recipe, validation subset or space starts
    fresh studies instead of mixing trials scored two ways. Older studies stay in the file."""
    import hashlib

    cfg = space.run_config()

    # fields added after a protocol's studies ran are hashed only when set, so a space and config
    # that do not use them still find their studies (``qat``, ``data.exclude_train_overlap``)
    def at_default(model: Any, fields: tuple[str, ...]) -> set[str]:
        return {k for k in fields if getattr(model, k) == type(model).model_fields[k].default}

    proto = {"protocol": PROTOCOL,
             "config": cfg.model_dump(mode="json", exclude={"run_dir": True,
                                                            "data": at_default(cfg.data, _ADDED_DATA_FIELDS)}),
             "space": space.model_dump(mode="json",
                                       exclude={"n_trials", *at_default(space, _ADDED_SPACE_FIELDS)})}
    tag = hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:6]
    base = f"minilm_sst2_{cfg.baseline_key()}_p{tag}"
    return {"search": base, "random": f"{base}_random", "uniform": f"{base}_uniform"}


SEEDS_BEGIN, SEEDS_END = "<!-- minilm_sst2_seeds:begin -->", "<!-- minilm_sst2_seeds:end -->"


def seed_names(names: dict[str, str], seed: int) -> dict[str, str]:
    """The search and random studies of a replication at sampler seed ``seed``: the reference
    studies' names with ``_seed<seed>`` appended, so they sit next to the studies they replicate."""
    return {"search": f"{names['search']}_seed{seed}", "random": f"{names['random']}_seed{seed}"}


def _n_counted(storage: str, name: str) -> int:
    return len(counted_trials(load_study(storage=storage, study_name=name))) if _exists(storage, name) else 0


def replicate(space: Any, storage: str, names: dict[str, str], seeds: list[int], n_trials: int,
              chunk: int = 4) -> None:
    """Run search and random search again at other sampler seeds (the space's ``seed`` also seeds
    each trial's training, ``seed + trial number``), ``chunk`` trials of one arm, then of the other,
    so that an interrupted replication leaves both arms at about the same trial count."""
    if space.seed in seeds:
        raise AutopruneError(f"--seeds {','.join(map(str, seeds))}: seed {space.seed} is the reference run's own "
                             "seed; pick others (a resumed study shifts its sampler seed by its trial count, "
                             "so seeds far apart, e.g. 1000,2000, draw independent sequences)")
    for seed in seeds:
        sp = {"search": space.model_copy(update={"seed": seed}),
              "random": space.model_copy(update={"seed": seed, "sampler": "random"})}
        sn = seed_names(names, seed)
        while True:
            done = {k: _n_counted(storage, n) for k, n in sn.items()}
            if min(done.values()) >= n_trials:
                break
            arm = min(done, key=lambda k: (done[k], k != "search"))  # the arm that is behind; search first
            log.info("replication seed %d: %s at %d of %d trials", seed, arm, done[arm], n_trials)
            run_search(sp[arm], study_name=sn[arm], storage=storage, n_trials=min(n_trials, done[arm] + chunk))


def seeds_report(storage: str, names: dict[str, str], seeds: list[int], n_target: int,
                 out_md: Path) -> tuple[str, dict[str, Any]]:
    """Markdown (also written into ``out_md``) and JSON-able numbers: hypervolume of search and random
    search at each sampler seed (the reference run is seed 0), each pair compared at the same trial
    count, and the ratio of the mean hypervolumes over the seeds whose arms both reached ``n_target``."""
    main = load_study(storage=storage, study_name=names["search"])
    ref = study_reference(main)
    runs = [(study_info(main).space.get("seed", 0), {k: names[k] for k in ("search", "random")})]
    runs += [(s, seed_names(names, s)) for s in seeds]
    lines = [SEEDS_BEGIN, "#### Search against random search, by sampler seed (generated)", "",
             f"Reference point as above ({ref[0]:.4f}, 1.0). Each pair is compared at the trial count both arms "
             f"have reached (target: {n_target}).", "",
             "| sampler seed | search trials | random trials | compared at | hypervolume, search | "
             "hypervolume, random | search / random | mean search / mean random, seeds so far |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out: dict[str, Any] = {"reference_point": list(ref), "target_trials": n_target, "seeds": []}
    full: list[tuple[float, float]] = []
    ms = mr = 0.0  # mean hypervolumes of search and random over the finished seeds so far
    for seed, sn in runs:
        st = {k: load_study(storage=storage, study_name=n) for k, n in sn.items() if _exists(storage, n)}
        done = {k: len(counted_trials(st[k])) if k in st else 0 for k in sn}
        n = min(min(done.values()), n_target)
        hv = {k: hypervolume_first(st[k], n, ref) if k in st else 0.0 for k in sn}
        ratio = f"{hv['search'] / hv['random']:.2f}x" if hv["random"] > 0 else "-"
        running = "-"
        if n >= n_target:
            full.append((hv["search"], hv["random"]))
            ms, mr = (sum(v) / len(full) for v in zip(*full))
            running = f"{ms / mr:.2f}x ({len(full)} seed{'s' if len(full) > 1 else ''})" if mr > 0 else "-"
        out["seeds"].append({"seed": seed, "search_trials": done["search"], "random_trials": done["random"],
                             "compared_at": n, "hypervolume_search": hv["search"], "hypervolume_random": hv["random"],
                             "finished": n >= n_target})
        lines.append(f"| {seed} | {done['search']} | {done['random']} | {n} | {hv['search']:.5f} | "
                     f"{hv['random']:.5f} | {ratio}{'' if n >= n_target else ' (interim)'} | {running} |")
    if full:
        out.update(mean_search=ms, mean_random=mr, finished_seeds=len(full))
        lines.append(f"\nMean hypervolume over the {len(full)} seed(s) whose arms both finished {n_target} trials: "
                     f"search {ms:.5f}, random {mr:.5f}, **{f'{ms / mr:.2f}x' if mr > 0 else '-'}** (target >= 1.1x).")
    lines.append(SEEDS_END)
    return write_block(out_md, "\n".join(lines), SEEDS_BEGIN, SEEDS_END), out


ARCHIVE = ROOT / "docs" / "data" / "minilm_sst2_studies.db"


def archive(storage: str, prefix: str, out: Path) -> list[str]:
    """Copy every study of ``storage`` whose name starts with ``prefix`` (the reference studies, their
    random, uniform and seed replications) into the SQLite file ``out``, replacing older copies there.

    ``runs/`` is not committed and a new machine starts without it; a committed copy keeps the trials
    behind the reported numbers, so the seeds report and the sampler surrogate can be re-run from a
    clean clone (``--storage sqlite:///docs/data/minilm_sst2_studies.db``)."""
    import optuna

    names = sorted(n for n in optuna.get_all_study_names(storage) if n.startswith(prefix))
    if not names:
        raise AutopruneError(f"no studies named {prefix}* in {storage}: nothing to archive")
    out.parent.mkdir(parents=True, exist_ok=True)
    dest = f"sqlite:///{out}"
    present = set(optuna.get_all_study_names(dest))
    for name in names:
        if name in present:
            optuna.delete_study(study_name=name, storage=dest)
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=dest)
    return names


def _exists(storage: str, name: str) -> bool:
    import optuna

    return name in optuna.get_all_study_names(storage)


PHASES = ("search", "random", "uniform", "report", "dashboard", "replicate", "seeds-report", "archive")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--n-trials", type=int, default=60)
    ap.add_argument("--phases", default="search,random,uniform,report,dashboard,archive",
                    help=f"comma-separated, from {', '.join(PHASES)}")
    ap.add_argument("--dashboards", default=str(ROOT / "dashboards"), help="where the dashboard phase writes")
    ap.add_argument("--storage", default=None, help="default: sqlite:///<run_dir>/minilm_sst2_bench.db")
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--seeds", default="", help="replicate search vs random at these sampler seeds "
                    "(phases replicate, seeds-report), e.g. 1000,2000")
    add_results_option(ap, "minilm_sst2")
    args = ap.parse_args()
    seeds = parse_ints(args.seeds, "--seeds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    phases = args.phases.split(",")
    if set(phases) - set(PHASES):
        raise AutopruneError(f"--phases: unknown phase(s) {', '.join(sorted(set(phases) - set(PHASES)))}; "
                             f"choose from {', '.join(PHASES)}")
    if {"replicate", "seeds-report"} & set(phases) and not seeds:
        raise AutopruneError("--phases replicate/seeds-report need --seeds, e.g. --seeds 1000,2000")
    space = load_search_space(args.space)
    run_dir = Path(space.run_config().run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{run_dir / 'minilm_sst2_bench.db'}"
    names = study_names(space)
    wall: dict[str, float] = {}
    if "search" in phases:
        t = time.perf_counter()
        run_search(space, study_name=names["search"], storage=storage, n_trials=args.n_trials)
        wall["search"] = time.perf_counter() - t
    if "random" in phases:
        t = time.perf_counter()
        run_search(space.model_copy(update={"sampler": "random"}), study_name=names["random"], storage=storage,
                   n_trials=args.n_trials)
        wall["random"] = time.perf_counter() - t
    if "uniform" in phases:
        t = time.perf_counter()
        run_uniform(space, storage, names["uniform"])
        wall["uniform"] = time.perf_counter() - t
    if "report" in phases:
        text, numbers = report(space, storage, names, Path(args.markdown),
                               run_dir / "bench_exports" / names["search"], wall, args.n_trials)
        print(text)
        write_results(args, "report", numbers)
    if "replicate" in phases:
        replicate(space, storage, names, seeds, args.n_trials)
    if "seeds-report" in phases:
        text, numbers = seeds_report(storage, names, seeds, args.n_trials, Path(args.markdown))
        print(text)
        write_results(args, "seeds", numbers)
    if "archive" in phases:
        for n in archive(storage, names["search"], ARCHIVE):
            log.info("archived study %s in %s", n, ARCHIVE)
    if "dashboard" in phases:
        for p in write_reference_dashboard(storage, names["search"], Path(args.dashboards)):
            log.info("wrote %s", p)


if __name__ == "__main__":
    run(main, log)
