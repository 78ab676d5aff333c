"""Benchmark: what dynamic int8 quantization costs the dense MiniLM-L6 / SST-2 baseline, and how its
accuracy depends on the evaluation batch size.

Method: the cached dense baseline of the run config (train it first: ``autoprune baseline -c CONFIG``) is
quantized four ways with ``torch.ao.quantization.quantize_dynamic`` (qint8 weights, activations quantized on
the fly with one scale per tensor): per-tensor weight scales on every Linear; per-channel weight scales on
every Linear (what autoprune's ``quantize: true`` does); per-channel with the FFN output Linear kept float;
per-channel with the FFN output and attention output Linears kept float. Each variant is scored on the test
split (872 labelled sentences) in length-sorted batches of 128, 32 and 1, and on the validation rows trials
are scored on (batches of 128). Its speedup is the median latency ratio against the float dense model at
batch 32 x 64, measured interleaved at 1 intra-op thread (autoprune.measure.measure_speed).

The table is printed and written to ``docs/results/int8.json``.

    .venv/bin/python benchmarks/int8.py [-c search_spaces/minilm_sst2_config.yaml] [--repeats 11]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, add_results_option, run, torch_ao_int8, write_results  # noqa: E402

from autoprune.config import load_config  # noqa: E402
from autoprune.data import eval_batches  # noqa: E402
from autoprune.errors import AutopruneError, ModelError  # noqa: E402
from autoprune.measure import evaluate, measure_speed  # noqa: E402
from autoprune.models import load_model  # noqa: E402
from autoprune.train import baseline_dir, load_task_data, load_tokenizer  # noqa: E402

log = logging.getLogger("benchmarks.int8")


def quantize(dense: nn.Module, per_channel: bool, keep_float: tuple[str, ...] = ()) -> nn.Module:
    """A dynamic-int8 copy of ``dense``; Linears whose name ends with one of ``keep_float`` stay float."""
    qc = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    m = copy.deepcopy(dense).eval()
    spec = {n: qc for n, mod in m.named_modules()
            if isinstance(mod, nn.Linear) and not any(n.endswith(k) for k in keep_float)}
    return quantize_dynamic(m, spec, dtype=torch.qint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default=str(ROOT / "search_spaces" / "minilm_sst2_config.yaml"))
    ap.add_argument("--threads", type=int, default=2, help="threads while scoring (timing uses 1)")
    ap.add_argument("--repeats", type=int, default=11)
    add_results_option(ap, "int8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    path = baseline_dir(cfg)
    if not (path / "config.json").exists():
        raise ModelError(f"no dense baseline at {path}; train it first: autoprune baseline -c {args.config}")
    tok = load_tokenizer(cfg)
    task = load_task_data(cfg, tok)
    if task.test is None:
        raise AutopruneError(f"the config {args.config} has no test split (data.files.test)")
    dense = load_model(str(path)).eval()
    n_layers = dense.config.num_hidden_layers
    ffn_out = tuple(f"layer.{i}.output.dense" for i in range(n_layers))
    attn_out = tuple(f"layer.{i}.attention.output.dense" for i in range(n_layers))
    variants = {
        "float (dense)": dense,
        "int8 per-tensor": quantize(dense, per_channel=False),
        "int8 per-channel (torch.ao, as trials quantized before ONNX Runtime)": torch_ao_int8(dense),
        "int8 per-channel, FFN output float": quantize(dense, per_channel=True, keep_float=ffn_out),
        "int8 per-channel, FFN + attention output float": quantize(dense, per_channel=True,
                                                                   keep_float=ffn_out + attn_out),
    }
    rows = []
    for name, m in variants.items():
        # evaluate(eval_batches(...)) at explicit batch sizes, not measure.evaluate_split: the point is to show
        # how int8 scores move with the batch size that evaluate_split pins to 1 for int8 models
        acc = {bs: evaluate(m, eval_batches(task.test, bs, task.pad_token_id), task.num_labels).accuracy
               for bs in (128, 32, 1)}
        val = evaluate(m, eval_batches(task.validation, 128, task.pad_token_id), task.num_labels).accuracy
        speed = 1.0 if m is dense else measure_speed(dense, m, threads=1, repeats=args.repeats, batch1=False).speedup
        rows.append((name, acc, val, speed))
        log.info("%s: test %s, validation %.4f, speedup %.2fx", name, acc, val, speed)
    print(f"\nDense baseline {path} ({cfg.model.name_or_path}); test n={len(task.test)}, validation n="
          f"{len(task.validation)}; speedup: median latency ratio against float at batch 32 x 64, 1 thread, "
          f"interleaved, {args.repeats} repeats; torch {torch.__version__}\n")
    print("| variant | test b128 | test b32 | test b1 | validation b128 | speedup b32x64 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, acc, val, speed in rows:
        print(f"| {name} | {acc[128]:.4f} | {acc[32]:.4f} | {acc[1]:.4f} | {val:.4f} | {speed:.2f}x |")
    write_results(args, "int8", {
        "baseline_dir": str(path), "test_n": len(task.test), "validation_n": len(task.validation),
        "repeats": args.repeats, "torch": torch.__version__,
        "rows": [{"variant": name, "test_accuracy_by_batch": {str(k): v for k, v in acc.items()},
                  "validation_accuracy_b128": val, "speedup_b32x64": speed} for name, acc, val, speed in rows]})


if __name__ == "__main__":
    run(main, log)
