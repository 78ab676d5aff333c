"""Which validation rows rank trained trial models the way the test split does.

The search selects policies on validation accuracy and the benchmark reports test accuracy, so
the validation rows should order models as test does. This script loads every saved trial model
of the given studies (``save_models: true``; int8 policies are re-quantized by ``load_pruned``),
scores each one on several candidate validation row sets and on the test split, and prints, per
row set: its size, the dense model's accuracy, the Spearman rank correlation of the models'
accuracies with their test accuracies (all models, and the 10 best on that row set), and the mean
absolute difference between a model's drop on that row set and its test drop.

Row sets (each a ``data:`` setting of the run config, so the winner can be switched on as is):
``min_validation_words: 15`` (the reference config), ``exclude_train_overlap: true`` (rows that do
not occur inside a training row), and both.

    .venv/bin/python scripts/bench_validation_rows.py --studies NAME[,NAME...] [-c CONFIG]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.errors import AutopruneError  # noqa: E402

log = logging.getLogger("bench_validation_rows")

ROW_SETS = {
    "min_validation_words: 15": {"min_validation_words": 15, "exclude_train_overlap": False},
    "exclude_train_overlap: true": {"min_validation_words": None, "exclude_train_overlap": True},
    "both": {"min_validation_words": 15, "exclude_train_overlap": True},
}


def ranks(xs: list[float]) -> list[float]:
    """Ranks with ties averaged (1-based).

    >>> ranks([0.5, 0.9, 0.5])
    [1.5, 3.0, 1.5]
    """
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (Pearson on tie-averaged ranks).

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else float("nan")


def main() -> None:
    import torch

    from autoprune.config import load_config
    from autoprune.serialization import load_pruned
    from autoprune.measure import evaluate_split, is_dynamic_int8
    from autoprune.models import load_model
    from autoprune.train import baseline_dir, load_task_data, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_config.yaml"))
    ap.add_argument("--studies", required=True, help="comma-separated study names (folders under <run_dir>/models)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    tok = load_tokenizer(cfg)
    tasks = {name: load_task_data(cfg.model_copy(update={"data": cfg.data.model_copy(update={**kw, "max_validation_samples": None})}), tok)
             for name, kw in ROW_SETS.items()}
    dirs = []
    for study in args.studies.split(","):
        d = Path(cfg.run_dir) / "models" / study
        if not d.is_dir():
            raise SystemExit(f"error: no saved models for study {study} under {d} (the space needs save_models: true)")
        dirs += sorted((p for p in d.glob("trial_*") if (p / "config.json").is_file()),
                       key=lambda p: int(p.name.split("_")[1]))
    if len(dirs) < 3:
        raise SystemExit(f"error: {len(dirs)} saved models; a rank correlation needs at least 3")
    any_task = next(iter(tasks.values()))

    def score(model: Any) -> dict[str, float]:
        out = {name: evaluate_split(model, t.validation, batch_size=128, pad_id=t.pad_token_id,
                                    num_labels=t.num_labels).accuracy for name, t in tasks.items()}
        out["test"] = evaluate_split(model, any_task.test, batch_size=128, pad_id=any_task.pad_token_id,
                                     num_labels=any_task.num_labels).accuracy
        return out

    t0 = time.perf_counter()
    dense = score(load_model(str(baseline_dir(cfg))).eval())
    rows: list[dict[str, float]] = []
    n_int8 = 0
    for i, d in enumerate(dirs):
        model = load_pruned(d)
        n_int8 += is_dynamic_int8(model)
        rows.append(score(model))
        log.info("%d/%d %s/%s: %s", i + 1, len(dirs), d.parent.name, d.name,
                 " ".join(f"{k}={v:.4f}" for k, v in rows[-1].items()))
    test = [r["test"] for r in rows]
    lines = [f"Command: `.venv/bin/python scripts/bench_validation_rows.py --studies {args.studies}` · "
             f"{len(rows)} saved trial models ({n_int8} int8, scored one sentence at a time), "
             f"{(time.perf_counter() - t0) / 60:.0f} min", "",
             "| validation rows | n | dense acc | Spearman with test (all) | Spearman (10 best on these rows) | "
             "mean abs(drop - test drop), pts |", "|---|---:|---:|---:|---:|---:|"]
    for name, t in tasks.items():
        acc = [r[name] for r in rows]
        best = sorted(range(len(rows)), key=lambda i: acc[i], reverse=True)[:10]
        gap = sum(abs((dense[name] - a) - (dense["test"] - b)) for a, b in zip(acc, test)) / len(rows)
        lines.append(f"| `{name}` | {len(t.validation)} | {dense[name]:.4f} | {spearman(acc, test):.2f} | "
                     f"{spearman([acc[i] for i in best], [test[i] for i in best]):.2f} | {100 * gap:.2f} |")
    lines.append(f"\nDense test accuracy: {dense['test']:.4f} (n={len(any_task.test)}).")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except AutopruneError as e:
        sys.exit(f"error: {e}")
