"""Quantization-aware retraining against plain int8: the same int8 policies retrained both ways, side by side.

For each chosen trial of a reference study (default: the int8 trials on its Pareto front) the
trial's policy is re-run twice through ``run_trial`` with the same seed, batches and budget,
once as it ran (``qat: false``) and once with ``qat: true``; two processes at a time, one thread
each (as the search runs its trials). Each run reports validation accuracy (the search's
objective) and its interleaved speedup against dense (batch 32 x 64); the saved model is then
loaded as export loads it (``load_pruned``: re-quantized to int8) and scored on the test split,
as the reference report scores the exported front. The plain run should reproduce the stored
trial's validation accuracy exactly (printed as a check).

    .venv/bin/python scripts/bench_qat.py --study NAME [--trials 15,2] [--space search_spaces/minilm_sst2.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune import _study as S  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.search import load_search_space, open_study  # noqa: E402

log = logging.getLogger("bench_qat")


def _run(space_path: str, policy: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """One retraining in a fresh process (1 thread): validation accuracy, speedup, then test on the export."""
    import torch

    from autoprune.serialization import load_pruned
    from autoprune.measure import evaluate_split
    from autoprune.policy import PruningPolicy
    from autoprune.train import load_task_data, load_tokenizer
    from autoprune.trial import run_trial

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    cfg = load_search_space(space_path).run_config()
    t0 = time.perf_counter()
    res = run_trial(cfg, PruningPolicy.from_dict(policy), save_dir=out_dir)
    minutes = (time.perf_counter() - t0) / 60
    task = load_task_data(cfg, load_tokenizer(cfg))
    test = evaluate_split(load_pruned(out_dir), task.test, batch_size=128, pad_id=task.pad_token_id,
                          num_labels=task.num_labels)
    dense_test = evaluate_split(_dense(cfg), task.test,
                                batch_size=128, pad_id=task.pad_token_id, num_labels=task.num_labels)
    return {"val": res.accuracy, "dense_val": res.dense_accuracy, "speedup": res.speedup, "test": test.accuracy,
            "dense_test": dense_test.accuracy, "minutes": minutes,
            "step_s": res.phase_seconds["retrain"] / max(res.retrain_steps, 1)}


def _dense(cfg: Any) -> Any:
    from autoprune.models import load_model
    from autoprune.train import baseline_dir

    return load_model(str(baseline_dir(cfg))).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--study", required=True, help="the study whose int8 trials are re-run")
    ap.add_argument("--storage", default=None, help="default: sqlite:///<run_dir>/minilm_sst2_bench.db")
    ap.add_argument("--trials", default=None, help="comma-separated trial numbers (default: int8 trials on the front)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    space = load_search_space(args.space)
    run_dir = Path(space.run_config().run_dir).resolve()
    storage = args.storage or f"sqlite:///{run_dir / 'minilm_sst2_bench.db'}"
    study = open_study(storage, args.study)
    if args.trials:
        wanted = {int(x) for x in args.trials.split(",")}
        trials = [t for t in study.get_trials(deepcopy=False) if t.number in wanted]
        if len(trials) != len(wanted):
            raise SystemExit(f"error: study {args.study} has no trial(s) {sorted(wanted - {t.number for t in trials})}")
    else:
        trials = study.best_trials
    trials = [t for t in trials if t.values and t.user_attrs.get(S.T_POLICY, {}).get("quantize")]
    if not trials:
        raise SystemExit("error: no int8 trial to re-run (pass --trials with trials whose policy has quantize: true)")
    jobs = [(t, qat) for t in trials for qat in (False, True)]
    log.info("%d retrainings (%s), %d at a time, 1 thread each", len(jobs),
             ", ".join(f"trial {t.number} qat={q}" for t, q in jobs), args.workers)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp, \
            ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futs = [pool.submit(_run, str(Path(args.space).resolve()), {**t.user_attrs[S.T_POLICY], "qat": qat},
                            str(Path(tmp) / f"t{t.number}_{int(qat)}")) for t, qat in jobs]
        out = []
        for (t, qat), f in zip(jobs, futs):
            out.append(f.result())
            log.info("trial %d qat=%s: %s", t.number, qat, json.dumps(out[-1]))  # kept in the log if the table fails
    wall = (time.perf_counter() - t0) / 60
    lines = [f"Command: `.venv/bin/python scripts/bench_qat.py --study {args.study}"
             + (f" --trials {args.trials}" if args.trials else "") + f"` · {args.workers} at a time, 1 thread each, "
             f"{wall:.0f} min wall", "",
             "| trial | policy | stored val | qat | val acc | val drop | test acc | test drop (pts) | speedup b32x64 | "
             "s/step | min |", "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (t, qat), r in zip(jobs, out):
        lines.append(f"| {t.number} | {t.user_attrs.get(S.T_SUMMARY, '')} | {t.values[0]:.4f} | {'yes' if qat else 'no'} | "
                     f"{r['val']:.4f} | {100 * (r['dense_val'] - r['val']):.2f} | {r['test']:.4f} | "
                     f"{100 * (r['dense_test'] - r['test']):.2f} | {r['speedup']:.2f}x | {r['step_s']:.3f} | "
                     f"{r['minutes']:.1f} |")
    lines.append(f"\nDense: validation {out[0]['dense_val']:.4f}, test {out[0]['dense_test']:.4f}.")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except AutopruneError as e:
        sys.exit(f"error: {e}")
