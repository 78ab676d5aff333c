"""Benchmark: does averaging fine-tunings of the dense MiniLM-L6 / SST-2 baseline lift its test accuracy?

Issue 5 asks for a dense baseline at >= 90.0% SST-2 test accuracy; single fine-tunings of this checkpoint
score 0.888-0.898. Two cheap ways to get more out of fine-tunings that already exist are checked here,
on the cached baselines of the run config at the given ``baseline.seed`` values (train them first:
``autoprune baseline -c CONFIG`` with ``baseline.seed`` set to each):

- **weight average** ("model soup", Wortsman et al. 2022): the element-wise mean of the checkpoints'
  float weights, one model of the dense size, so a candidate for the baseline itself;
- **ensemble**: the mean of the checkpoints' softmax outputs, N times the cost, so not a baseline
  candidate, but the accuracy a distillation teacher built from these checkpoints would offer.

Each is scored on the validation rows trials are scored on and on the test split (872 sentences).

    .venv/bin/python scripts/bench_baseline_average.py [-c search_spaces/minilm_sst2_config.yaml] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_config  # noqa: E402
from autoprune.data import eval_batches  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.models import load_model  # noqa: E402
from autoprune.train import baseline_dir, load_task_data, load_tokenizer  # noqa: E402

@torch.no_grad()
def probabilities(model: torch.nn.Module, split, pad_id: int, batch_size: int) -> torch.Tensor:
    """Softmax outputs of ``model`` on ``split``, in the split's length-sorted batch order."""
    model.eval()
    return torch.cat([model(**{k: v for k, v in batch.items() if k != "labels"}).logits.softmax(-1)
                      for batch in eval_batches(split, batch_size, pad_id)])


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(-1) == labels).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_config.yaml"))
    ap.add_argument("--seeds", default="0,1", help="baseline.seed values of cached baselines to average")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise AutopruneError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1") from None
    if len(seeds) < 2:
        raise AutopruneError("--seeds: give at least two baseline seeds to average")
    torch.set_num_threads(args.threads)
    base = load_config(args.config)
    dirs = []
    for s in seeds:
        cfg = base.model_copy(update={"baseline": base.baseline.model_copy(update={"seed": s})})
        d = baseline_dir(cfg)
        if not (d / "metrics.json").is_file():
            raise AutopruneError(f"no cached baseline for baseline.seed {s} under {d}; train it first with "
                                 f"`autoprune baseline -c {args.config}` and baseline.seed: {s}")
        dirs.append(d)
    tok = load_tokenizer(base)
    task = load_task_data(base, tok)
    if task.test is None:
        raise AutopruneError(f"{args.config}: the data section names no test split; this benchmark scores on it")
    splits = {"validation": task.validation, "test": task.test}

    bs, pad = base.eval_batch_size, task.pad_token_id
    labels = {name: torch.cat([b["labels"] for b in eval_batches(split, bs, pad)]) for name, split in splits.items()}

    def score(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: probabilities(model, split, pad, bs) for name, split in splits.items()}

    models = [load_model(str(d)) for d in dirs]
    probs = [score(m) for m in models]  # one dict (split -> softmax outputs) per seed
    rows = {f"seed {s}": {name: accuracy(p[name], labels[name]) for name in splits} for s, p in zip(seeds, probs)}
    rows["ensemble (mean of softmax)"] = {
        name: accuracy(torch.stack([p[name] for p in probs]).mean(0), labels[name]) for name in splits}
    states = [m.state_dict() for m in models]
    averaged = models[0]
    averaged.load_state_dict({k: torch.stack([st[k] for st in states]).mean(0) if v.is_floating_point() else v
                              for k, v in states[0].items()})
    soup = score(averaged)
    rows["weight average (soup)"] = {name: accuracy(soup[name], labels[name]) for name in splits}
    votes = torch.stack([p["test"].argmax(-1) for p in probs])
    disagree = int((votes != votes[0]).any(0).sum())

    n_val, n_test = len(labels["validation"]), len(labels["test"])
    print(f"config {args.config}; baselines {', '.join(d.name for d in dirs)} (baseline.seed {args.seeds})")
    print(f"\n| model | validation (n={n_val}) | test (n={n_test}) | test sentences right |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['validation']:.4f} | {r['test']:.4f} | {round(r['test'] * n_test)} |")
    print(f"\nThe {len(seeds)} baselines do not all agree on {disagree} of {n_test} test sentences.")


if __name__ == "__main__":
    try:
        main()
    except AutopruneError as e:
        sys.exit(f"error: {e}")
