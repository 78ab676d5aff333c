"""Scoring a quantization-aware model in batches against one sentence at a time, side by side.

A ``qat`` trial checks its validation accuracy mid-retraining with the int8 simulation
(:func:`autoprune.quantize.fake_quantized`) switched on. That simulation used to be scored one
sentence at a time, like a real dynamic int8 model, because its input scale covered each padded
row; in eval mode it now takes the scale over each sentence's own tokens, so it is scored in
batches (``eval_batch_size``). This script shows the two give the same predictions and how much
time the change saves, on the reference run's baseline and validation rows.

For each model (the dense baseline, and the baseline with half of every layer's heads and FFN
neurons removed by L1, not retrained) it scores the search's validation rows with the simulation
on, one sentence at a time and in batches, alternating, ``--rounds`` times each, on one thread (as
a search worker runs). It prints the median seconds per pass, their ratio, how many predictions
agree, both accuracies, the largest and the median logit difference between the two, and, for
scale, how far the simulation (one at a time) is from the real dynamic int8 model (one at a time):
the largest logit difference and the real model's accuracy.

    .venv/bin/python scripts/bench_qat_eval.py [--space search_spaces/minilm_sst2.yaml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.data import eval_batches  # noqa: E402
from autoprune.importance import keep_top, n_removed, score_structured  # noqa: E402
from autoprune.measure import classification_metrics  # noqa: E402
from autoprune.models import load_model  # noqa: E402
from autoprune.quantize import fake_quantized, quantize_dynamic_int8  # noqa: E402
from autoprune.search import load_search_space  # noqa: E402
from autoprune.surgery import prune_structured  # noqa: E402
from autoprune.train import ensure_baseline, load_task_data, load_tokenizer  # noqa: E402


def _logits(model: torch.nn.Module, split, batch_size: int, pad_id: int) -> tuple[torch.Tensor, list[int], float]:
    """Logits in length order, labels, seconds."""
    t0 = time.perf_counter()
    out, labels = [], []
    with torch.no_grad():
        for b in eval_batches(split, batch_size, pad_id):
            labels += b.pop("labels").tolist()
            out.append(model(**b).logits)
    return torch.cat(out), labels, time.perf_counter() - t0


def _half_l1(dense: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(dense)
    hs, ns = score_structured(m, "l1", seed=0)
    prune_structured(m, [keep_top(h, len(h) - n_removed(len(h), 0.5)) for h in hs],
                     [keep_top(n, len(n) - n_removed(len(n), 0.5)) for n in ns])
    return m.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "minilm_sst2.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run config's eval_batch_size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    cfg = load_search_space(args.space).run_config()
    bs = args.batch_size or cfg.eval_batch_size
    task = load_task_data(cfg, load_tokenizer(cfg))
    dense = load_model(str(ensure_baseline(cfg, progress=False)), num_labels=task.num_labels).eval()
    val, pad = task.validation, task.pad_token_id
    print(f"# qat scoring: {len(val)} validation rows of {cfg.model.name_or_path}, torch {torch.__version__}, "
          f"1 thread, {args.rounds} alternating rounds, batch {bs} against 1; median seconds per pass")
    print("| model | one at a time (s) | batched (s) | ratio | predictions agree | acc one / batched "
          "| logit diff one vs batched, max / median | logit diff simulated vs real int8, max / median "
          "| real int8 acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in (("dense", dense), ("L1 50% heads+FFN, not retrained", _half_l1(dense))):
        one_s, bat_s = [], []
        with fake_quantized(model):
            for _ in range(args.rounds):
                one, labels, t = _logits(model, val, 1, pad)
                one_s.append(t)
                bat, labels_b, t = _logits(model, val, bs, pad)
                bat_s.append(t)
        if labels != labels_b:  # both passes walk the same length order; a mismatch would void the comparison
            raise SystemExit("label order differs between the passes")
        p1, pb = one.argmax(-1).tolist(), bat.argmax(-1).tolist()
        real, _, _ = _logits(quantize_dynamic_int8(model), val, 1, pad)
        a1 = classification_metrics(p1, labels, task.num_labels).accuracy
        ab = classification_metrics(pb, labels, task.num_labels).accuracy
        ar = classification_metrics(real.argmax(-1).tolist(), labels, task.num_labels).accuracy
        m1, mb = statistics.median(one_s), statistics.median(bat_s)
        agree = sum(int(x == y) for x, y in zip(p1, pb))
        d_bat, d_real = (one - bat).abs(), (one - real).abs()
        print(f"| {name} | {m1:.1f} | {mb:.1f} | {m1 / mb:.1f}x | {agree}/{len(p1)} | {a1:.4f} / {ab:.4f} "
              f"| {d_bat.max().item():.1e} / {d_bat.median().item():.1e} "
              f"| {d_real.max().item():.1e} / {d_real.median().item():.1e} | {ar:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
