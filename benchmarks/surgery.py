"""Benchmark: structured surgery on the real MiniLM-L6 -- measured speedup against FLOPs reduction,
and SST-2 test accuracy right after pruning (no retraining) for each criterion.

Speed: for head and FFN sparsity 0/25/50/75% (heads only, FFN only, both), the pruned model and
the dense model are timed interleaved in this process (dense, pruned, pruned, dense, ...) after
warm-up, at a fixed thread count, on the same random batch (default 32 x 64 tokens and 1 x 64);
medians are reported with the ratio speedup / FLOPs reduction (target >= 0.85).

Accuracy: the dense baseline of the config is fine-tuned once (cached, resumable) and every
criterion prunes a copy of it uniformly; accuracy is measured on the test split with no retraining.

Both tables are printed as markdown and written to ``docs/results/surgery.json`` (sections ``speed``
and ``accuracy``).

    .venv/bin/python benchmarks/surgery.py [-c CONFIG] [--repeats 15] [--threads 1] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, add_results_option, run, write_results  # noqa: E402

from autoprune.config import load_config  # noqa: E402
from autoprune.data import eval_batches, train_batches  # noqa: E402
from autoprune.criteria import get_criterion  # noqa: E402
from autoprune.measure import count_flops, evaluate, measure_speed  # noqa: E402
from autoprune.models import get_adapter, load_model  # noqa: E402
from autoprune.policy import PruningPolicy  # noqa: E402
from autoprune.pruner import prune  # noqa: E402
from autoprune.train import ensure_baseline, load_baseline_metrics, load_task_data, load_tokenizer  # noqa: E402


def prune_uniform(model, criterion: str, heads: float, ffn: float, calibration=None, seed: int = 0) -> None:
    """Cut ``heads`` / ``ffn`` of every layer by ``criterion`` with :func:`autoprune.prune` (no retraining)."""
    depth = len(get_adapter(model).layers(model))
    prune(model, PruningPolicy.uniform(criterion, depth, heads=heads, ffn=ffn, retrain_steps=0), calibration, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_config.yaml"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--skip-accuracy", action="store_true")
    add_results_option(ap, "surgery")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    print(f"# surgery benchmark on {cfg.model.name_or_path} ({cfg.model.resolve()})")
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{args.threads} thread(s); latency medians of {args.repeats} interleaved runs after 3 warm-up runs")
    dense = load_model(cfg.model.resolve(), num_labels=2).eval()
    sp = [0.0, 0.25, 0.5, 0.75]
    print(f"\n## Speed vs FLOPs (batch {args.batch_size} x {args.seq_len}; batch 1 x {args.seq_len})\n")
    print("| pruned | sparsity | dense ms | pruned ms | speedup | FLOPs reduction | speedup / FLOPs | "
          "b1 dense ms | b1 pruned ms | b1 speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dense_flops = count_flops(dense, args.seq_len, args.batch_size)
    speed_rows = []
    for what in ("heads", "ffn", "both"):
        for s in sp:
            if s == 0 and what != "both":
                continue
            m = copy.deepcopy(dense)
            prune_uniform(m, "l1", s if what in ("heads", "both") else 0.0, s if what in ("ffn", "both") else 0.0)
            rep = measure_speed(dense, m, batch_size=args.batch_size, seq_len=args.seq_len, threads=args.threads,
                                repeats=args.repeats)
            fr = dense_flops / count_flops(m, args.seq_len, args.batch_size)
            speed_rows.append({"pruned": what, "sparsity": s, "dense_ms": rep.dense_ms, "pruned_ms": rep.pruned_ms,
                               "speedup": rep.speedup, "flops_reduction": fr, "dense_ms_b1": rep.dense_ms_b1,
                               "pruned_ms_b1": rep.pruned_ms_b1, "speedup_b1": rep.speedup_b1})
            print(f"| {what} | {s:.0%} | {rep.dense_ms:.1f} | {rep.pruned_ms:.1f} | {rep.speedup:.2f}x | {fr:.2f}x | "
                  f"{rep.speedup / fr:.2f} | {rep.dense_ms_b1:.2f} | {rep.pruned_ms_b1:.2f} | {rep.speedup_b1:.2f}x |",
                  flush=True)
    write_results(args, "speed", {"model": cfg.model.name_or_path, "threads": args.threads, "repeats": args.repeats,
                                  "batch_size": args.batch_size, "seq_len": args.seq_len,
                                  "torch": torch.__version__, "rows": speed_rows})
    if args.skip_accuracy:
        return
    t0 = time.perf_counter()
    bdir = ensure_baseline(cfg)
    metrics = load_baseline_metrics(bdir)
    tok = load_tokenizer(cfg)
    task = load_task_data(cfg, tok)
    base = load_model(str(bdir)).eval()
    print("\n## Test accuracy right after pruning (no retraining), heads and FFN pruned uniformly\n")
    print(f"dense baseline: {metrics['steps']} steps at batch {metrics['settings']['batch_size']}, "
          f"test accuracy {metrics['test_accuracy']:.4f} (n={metrics['test_n']}), "
          f"validation {metrics['validation_accuracy']:.4f}; {bdir}\n")
    print("| criterion | " + " | ".join(f"{s:.0%}" for s in sp[1:]) + " |")
    print("|---|" + "---|" * (len(sp) - 1))
    from autoprune.criteria import criterion_names

    accuracy: dict[str, dict[str, float]] = {}
    for crit in criterion_names():
        row = []
        for s in sp[1:]:
            m = copy.deepcopy(base)
            calib = None
            if get_criterion(crit).needs_gradients:
                it = train_batches(task.train, 32, seed=7, pad_id=task.pad_token_id)
                calib = [next(it) for _ in range(cfg.calibration_batches)]
            prune_uniform(m, crit, s, s, calib)
            acc = evaluate(m, eval_batches(task.test, 128, task.pad_token_id), task.num_labels).accuracy
            row.append(f"{acc:.4f}")
            accuracy.setdefault(crit, {})[str(s)] = acc
        print(f"| {crit} | " + " | ".join(row) + " |", flush=True)
    print(f"\n(accuracy part: {time.perf_counter() - t0:.0f} s)")
    write_results(args, "accuracy", {"baseline_dir": str(bdir), "dense_test_accuracy": metrics["test_accuracy"],
                                     "test_n": metrics["test_n"], "accuracy_by_sparsity": accuracy})


if __name__ == "__main__":
    run(main, logging.getLogger("benchmarks.surgery"))
