#!/usr/bin/env python
"""Benchmark: int8 policies survive export: the ONNX file ``autoprune export-onnx`` writes scores what the
trial recorded, MiniLM-L6 / SST-2.

Method. Each int8 policy (``quantize: true``: ONNX Runtime dynamic int8, per-channel weights) runs as a
trial on the fine-tuned MiniLM-L6 / SST-2 checkpoint (``search_spaces/minilm_sst2_finetuned.yaml``: speed
objective ONNX Runtime on CPU, 1 thread) scored on the 872 SST-2 test sentences (``final_split="test"``)
with its model saved, as ``autoprune prune --split test --save DIR`` does. The saved model is then exported
as ``autoprune export-onnx DIR --int8`` does (``load_pruned(as_float=True)``, ``export_onnx(int8=True)``)
and the ONNX file is scored on the same sentences by ``autoprune.runtimes.onnx_accuracy``, one sentence
at a time. Reported per policy: the trial's test accuracy, the exported file's, their difference in
points (target: within 0.5), the ONNX Runtime speedup against dense fp32 ONNX Runtime the trial measured
and the file sizes.

Policies: uniform 25 / 50 / 75% heads and FFN (Fisher scores, least-squares reconstruction, no
retraining: seconds each) and the 50% one with 100 steps of quantization-aware retraining (``qat``).

    PYTHONPATH=. .venv/bin/python benchmarks/int8_export.py [-c search_spaces/minilm_sst2_finetuned.yaml]

Writes the section ``export`` of docs/results/int8_export.json and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, add_results_option, run, write_results  # noqa: E402

from autoprune.config import load_config  # noqa: E402
from autoprune.onnx_export import export_onnx  # noqa: E402
from autoprune.policy import PruningPolicy  # noqa: E402
from autoprune.runtimes import onnx_accuracy  # noqa: E402
from autoprune.serialization import load_pruned  # noqa: E402
from autoprune.train import load_task_data, load_tokenizer  # noqa: E402
from autoprune.trial import run_trial  # noqa: E402

log = logging.getLogger("benchmarks.int8_export")
TOLERANCE_POINTS = 0.5


def policies(num_layers: int) -> dict[str, PruningPolicy]:
    """The int8 policies the benchmark exports."""
    out = {}
    for s in (0.25, 0.5, 0.75):
        out[f"uniform {s:.0%} int8"] = PruningPolicy.uniform("fisher", num_layers, heads=s, ffn=s, retrain_steps=0,
                                                             quantize=True, reconstruct="least_squares")
    out["uniform 50% int8, 100 qat steps"] = PruningPolicy.uniform(
        "fisher", num_layers, heads=0.5, ffn=0.5, retrain_steps=100, quantize=True, qat=True,
        reconstruct="least_squares")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_finetuned.yaml"))
    add_results_option(ap, "int8_export")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    task = load_task_data(cfg, load_tokenizer(cfg))
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoprune_int8_export_") as tmp:
        for name, pol in policies(6).items():
            t0 = time.perf_counter()
            saved = Path(tmp) / f"m{len(rows)}"
            res = run_trial(cfg, pol, final_split="test", save_dir=str(saved))
            trial_s = time.perf_counter() - t0
            onnx_path = export_onnx(load_pruned(saved, as_float=True), saved / "model.onnx", int8=True)
            got = onnx_accuracy(onnx_path, task.test, pad_id=task.pad_token_id, num_labels=task.num_labels)
            ort = res.targets["targets"][res.targets["objective"]]
            diff = (got.accuracy - res.accuracy) * 100
            rows.append({"policy": name, "summary": pol.summary(), "trial_test_accuracy": res.accuracy,
                         "exported_test_accuracy": got.accuracy, "n": got.n, "difference_points": diff,
                         "within_tolerance": abs(diff) <= TOLERANCE_POINTS, "dense_test_accuracy": res.dense_accuracy,
                         "ort_speedup": ort["speedup"], "ort_speedup_quartiles": [ort["speedup_q1"], ort["speedup_q3"]],
                         "ort_speedup_b1": ort.get("speedup_b1"), "flops_reduction": res.flops_reduction,
                         "onnx_int8_mb": onnx_path.stat().st_size / 1e6, "trial_seconds": trial_s})
            log.info("%s: trial %.4f, exported %.4f (%+.2f points), ORT int8 %.2fx", name, res.accuracy,
                     got.accuracy, diff, ort["speedup"])
    lines = ["| policy | trial test acc | exported int8 ONNX test acc | difference (pts) | ORT speedup b32 (quartiles) "
             "| ORT speedup b1 | FLOPs reduction | int8 ONNX MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q1, q3 = r["ort_speedup_quartiles"]
        lines.append(f"| {r['policy']} | {r['trial_test_accuracy']:.4f} | {r['exported_test_accuracy']:.4f} | "
                     f"{r['difference_points']:+.2f} | {r['ort_speedup']:.2f}x ({q1:.2f}-{q3:.2f}) | "
                     f"{r['ort_speedup_b1']:.2f}x | {r['flops_reduction']:.2f}x | {r['onnx_int8_mb']:.1f} |")
    worst = max(abs(r["difference_points"]) for r in rows)
    lines.append(f"\nlargest |difference| {worst:.2f} points (target: within {TOLERANCE_POINTS})")
    print("\n".join(lines))
    write_results(args, "export", {"config": str(Path(args.config).resolve().relative_to(ROOT)), "rows": rows,
                                   "tolerance_points": TOLERANCE_POINTS, "largest_difference_points": worst,
                                   "table": "\n".join(lines)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(main, log)
