"""Benchmark: structured pruning and int8 in eager PyTorch and in ONNX Runtime, MiniLM-L6 / SST-2.

Method. The fine-tuned MiniLM-L6 / SST-2 checkpoint is cut uniformly (heads and FFN neurons at 25 / 50 /
75%, L1 unit scores, ``autoprune.surgery.prune_structured``, no retraining: speed depends on the shape
only) and to the per-layer shapes of the reference run's structured front (docs/BENCHMARKS.md). Each
point runs as: eager PyTorch fp32; ONNX Runtime fp32 (the model exported by ``autoprune.onnx_export.export_onnx``,
an ``InferenceSession`` with 1 intra-op thread); ONNX Runtime dynamic int8 of that export
(``autoprune.quantize.quantize_onnx_int8``, per-channel); PyTorch ``torch.ao`` dynamic int8 (the path
autoprune's trials used until 2026-12-01, now a reference point only). For each input shape (32 x 64 and 1 x 64 random tokens) the dense fp32 model
in both runtimes and every variant of the point are timed in one interleaved loop
(``autoprune.measure.interleaved_times``: warm-up, then rounds in which every callable runs once, the first
to run rotating), so each ratio compares medians of the same rounds; the per-round ratios' quartiles give
the spread. Speedups are given against the dense fp32 model of the same runtime and against dense fp32
eager PyTorch. FLOPs are the encoder's analytic multiply-adds (``autoprune.measure.count_flops``).
Accuracy (uniform points and ``--model`` directories): the 872 SST-2 test sentences, PyTorch fp32 in
batches of 128, every int8 model one sentence at a time (activation scales span the batch).
torchao (``Int8DynamicActivationInt8WeightConfig``, eager) is timed on the dense model when installed.

    PYTHONPATH=. .venv/bin/python benchmarks/runtimes.py [--repeats 15] [--model SAVED_DIR ...]

Writes docs/results/runtimes.json and docs/results/runtimes.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import torch_ao_int8  # noqa: E402

from autoprune.config import RunConfig  # noqa: E402
from autoprune.criteria import get_criterion, keep_top, n_removed  # noqa: E402
from autoprune.onnx_export import export_onnx, onnx_inputs, onnx_session  # noqa: E402
from autoprune.measure import count_flops, evaluate_split, interleaved_times, random_batch, spread  # noqa: E402
from autoprune.models import get_adapter, load_model  # noqa: E402
from autoprune.runtimes import machine, onnx_accuracy  # noqa: E402
from autoprune.surgery import prune_structured  # noqa: E402
from autoprune.train import load_task_data, load_tokenizer  # noqa: E402

log = logging.getLogger("bench_runtimes")
CHECKPOINT = Path("/work/shared/models/minilm-l6-sst2")
SST2 = Path("/work/shared/data/sst2")
# per-layer (heads, FFN neurons) of the reference run's structured front (docs/BENCHMARKS.md, trials 12, 2, 21, 3, 17)
FRONT = {
    "front t12": ([7, 8, 9, 10, 11, 12], [1152, 768, 1229, 1075, 230, 845]),
    "front t2": ([6, 7, 7, 8, 8, 9], [922, 1229, 1306, 1382, 614, 1382]),
    "front t21": ([7, 7, 8, 9, 9, 10], [1536, 614, 922, 691, 538, 845]),
    "front t3": ([5, 5, 5, 5, 5, 5], [1152, 845, 1459, 768, 230, 1075]),
    "front t17": ([3, 3, 3, 2, 2, 2], [1306, 614, 1229, 922, 307, 1152]),
}
SHAPES = ((32, 64), (1, 64))


def uniform_cut(dense: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    """Heads and FFN neurons of every layer cut to ``sparsity`` by L1 unit scores."""
    m = copy.deepcopy(dense)
    hs, ns = get_criterion("l1").unit_scores(m)
    heads, ffn = get_adapter(m).shape(m)
    prune_structured(m, [keep_top(hs[i], h - n_removed(h, sparsity)) for i, h in enumerate(heads)],
                     [keep_top(ns[i], f - n_removed(f, sparsity)) for i, f in enumerate(ffn)])
    return m.eval()


def shape_cut(dense: torch.nn.Module, heads: list[int], ffn: list[int]) -> torch.nn.Module:
    """The per-layer shape ``heads`` / ``ffn``, keeping the highest-L1 units (speed depends on the shape only)."""
    m = copy.deepcopy(dense)
    hs, ns = get_criterion("l1").unit_scores(m)
    prune_structured(m, [keep_top(hs[i], h) for i, h in enumerate(heads)],
                     [keep_top(ns[i], f) for i, f in enumerate(ffn)])
    return m.eval()


def time_point(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    names = list(fns)
    with torch.inference_mode():
        ts = interleaved_times([fns[n] for n in names], warmup=warmup, repeats=repeats)
    return dict(zip(names, ts))


def ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Median ratio num/den (of the medians) and the quartiles of the per-round ratios."""
    q1, _, q3 = spread([a / b for a, b in zip(num, den)])
    return {"speedup": spread(num)[1] / spread(den)[1], "q1": q1, "q3": q3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds at batch 32 (batch 1: twice as many)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-front", action="store_true", help="skip the reference front's shapes")
    ap.add_argument("--model", action="append", default=[], help="also a saved pruned model directory "
                    "(prune --save / export): timed and its int8 ONNX accuracy scored")
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "runtimes.json"))
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "results" / "runtimes.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("autoprune").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    t_start = time.time()
    cfg = RunConfig.model_validate({"model": {"name_or_path": str(CHECKPOINT)}, "data": {
        "files": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "validation.tsv"),
                  "test": str(SST2 / "test.tsv")}, "max_length": 64, "max_train_samples": 64}})
    task = load_task_data(cfg, load_tokenizer(cfg))
    dense = load_model(str(CHECKPOINT)).eval()
    names = onnx_inputs(dense)[1]
    vocab = int(dense.config.vocab_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_runtimes_"))
    dense_onnx = export_onnx(dense, tmp / "dense.onnx")
    s_dense = onnx_session(dense_onnx, threads=1)

    points: list[tuple[str, torch.nn.Module, bool]] = [("dense", dense, True)]
    points += [(f"uniform {int(s * 100)}%", uniform_cut(dense, s), True) for s in (0.25, 0.5, 0.75)]
    if not args.no_front:
        points += [(name, shape_cut(dense, h, f), False) for name, (h, f) in FRONT.items()]
    points += [(f"model {Path(d).name}", load_model(d).eval(), True) for d in args.model]

    feeds = {}
    for bs, sl in SHAPES:
        b = random_batch(vocab, bs, sl, seed=0 if bs > 1 else 1)
        b["token_type_ids"] = b["input_ids"] * 0
        feeds[bs] = ({k: b[k] for k in ("input_ids", "attention_mask")}, {n: b[n].numpy() for n in names})

    rows = []
    for i, (label, model, score) in enumerate(points):
        t0 = time.time()
        f_onnx = dense_onnx if model is dense else export_onnx(model, tmp / f"p{i}.onnx")
        q_onnx = export_onnx(model, tmp / f"p{i}_int8.onnx", int8=True)
        s_f, s_q = onnx_session(f_onnx, threads=1), onnx_session(q_onnx, threads=1)
        tq = torch_ao_int8(model)
        row: dict[str, Any] = {"point": label, "heads_per_layer": get_adapter(model).shape(model)[0],
                               "ffn_per_layer": get_adapter(model).shape(model)[1],
                               "flops_reduction": count_flops(dense, 64, 32) / count_flops(model, 64, 32),
                               "onnx_int8_mb": q_onnx.stat().st_size / 1e6, "onnx_fp32_mb": f_onnx.stat().st_size / 1e6}
        for bs, sl in SHAPES:
            pt, ort_feed = feeds[bs]
            fns = {"torch_dense": lambda: dense(**pt), "ort_dense": lambda: s_dense.run(["logits"], ort_feed)}
            if model is not dense:
                fns["torch_fp32"] = lambda: model(**pt)
                fns["ort_fp32"] = lambda: s_f.run(["logits"], ort_feed)
            fns["ort_int8"] = lambda: s_q.run(["logits"], ort_feed)
            fns["torch_int8"] = lambda: tq(**pt)
            ts = time_point(fns, args.warmup, args.repeats if bs > 1 else 2 * args.repeats)
            ts.setdefault("torch_fp32", ts["torch_dense"])
            ts.setdefault("ort_fp32", ts["ort_dense"])
            key = f"b{bs}x{sl}"
            row[key] = {
                "ms": {k: spread(v)[1] for k, v in ts.items()},
                "iqr_ms": {k: spread(v)[2] - spread(v)[0] for k, v in ts.items()},
                "vs_same_runtime": {"torch_fp32": ratio(ts["torch_dense"], ts["torch_fp32"]),
                                    "ort_fp32": ratio(ts["ort_dense"], ts["ort_fp32"]),
                                    "ort_int8": ratio(ts["ort_dense"], ts["ort_int8"]),
                                    "torch_int8": ratio(ts["torch_dense"], ts["torch_int8"])},
                "vs_torch_fp32_dense": {k: ratio(ts["torch_dense"], ts[k])
                                        for k in ("torch_fp32", "ort_fp32", "ort_int8", "torch_int8")},
            }
        row["ort_speedup_over_flops"] = row["b32x64"]["vs_same_runtime"]["ort_fp32"]["speedup"] / row["flops_reduction"]
        row["torch_speedup_over_flops"] = (row["b32x64"]["vs_same_runtime"]["torch_fp32"]["speedup"]
                                           / row["flops_reduction"])
        if score:
            kw = dict(pad_id=task.pad_token_id, num_labels=task.num_labels)
            row["test_accuracy"] = {
                "torch_fp32": evaluate_split(model, task.test, batch_size=128, **kw).accuracy,
                "ort_int8": onnx_accuracy(q_onnx, task.test, **kw).accuracy,
                "torch_int8": evaluate_split(tq, task.test, batch_size=128, **kw).accuracy,  # scored at batch 1
            }
            row["test_n"] = len(task.test)
        rows.append(row)
        log.info("%s: %s (%.0f s)", label, json.dumps({k: row[k] for k in ("flops_reduction",)} | {
            "ort_b32": round(row["b32x64"]["vs_same_runtime"]["ort_fp32"]["speedup"], 2),
            "ort_int8_b32": round(row["b32x64"]["vs_same_runtime"]["ort_int8"]["speedup"], 2),
            "acc": row.get("test_accuracy")}), time.time() - t0)

    torchao = torchao_dense(dense, feeds, args.warmup, args.repeats)
    doc = {
        "benchmark": "runtimes", "date": dt.date.today().isoformat(),
        "command": " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/runtimes.py", *sys.argv[1:]]),
        "checkpoint": str(CHECKPOINT), "machine": {"cpu": machine()["cpu"], "platform": platform.platform()},
        "versions": _versions(), "threads": 1, "repeats_b32": args.repeats, "repeats_b1": 2 * args.repeats,
        "warmup": args.warmup, "method": __doc__.split("Method. ", 1)[1].split("\n\n")[0].replace("\n", " "),
        "points": rows, "torchao_dense": torchao, "seconds": time.time() - t_start,
    }
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    Path(args.out_md).write_text(md)
    print(md)


def torchao_dense(dense: torch.nn.Module, feeds: dict, warmup: int, repeats: int) -> dict[str, Any] | None:
    """torchao int8 dynamic-activation / int8-weight on the dense model, eager, against fp32 and torch.ao."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        log.info("torchao is not installed: its row is left out")
        return None
    import torchao

    tao = copy.deepcopy(dense)
    quantize_(tao, Int8DynamicActivationInt8WeightConfig())
    tao.eval()
    tq = torch_ao_int8(dense)
    out: dict[str, Any] = {"version": torchao.__version__}
    for bs, sl in SHAPES:
        pt = feeds[bs][0]
        ts = time_point({"fp32": lambda: dense(**pt), "torchao": lambda: tao(**pt), "torch_ao": lambda: tq(**pt)},
                        warmup, repeats if bs > 1 else 2 * repeats)
        out[f"b{bs}x{sl}"] = {"ms": {k: spread(v)[1] for k, v in ts.items()},
                              "torchao": ratio(ts["fp32"], ts["torchao"]), "torch_ao": ratio(ts["fp32"], ts["torch_ao"])}
    return out


def _versions() -> dict[str, str]:
    import onnxruntime
    import transformers

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def _x(r: dict[str, float]) -> str:
    return f"{r['speedup']:.2f}x ({r['q1']:.2f}-{r['q3']:.2f})"


def markdown(doc: dict[str, Any]) -> str:
    v = doc["versions"]
    lines = [
        "### Speed in the deployment runtime: eager PyTorch and ONNX Runtime, fp32 and int8 (MiniLM-L6 / SST-2)",
        "",
        f"Command: `{doc['command']}` ({doc['date']}; {doc['machine']['cpu']}, 1 thread; torch {v['torch']}, "
        f"onnxruntime {v['onnxruntime']}; {doc['seconds'] / 60:.1f} min).",
        "",
        doc["method"],
        "",
        "Cells: median speedup, in brackets the quartiles of the per-round ratios. *same runtime*: against the",
        "dense fp32 model of that runtime; *vs torch*: against dense fp32 eager PyTorch. int8: ONNX Runtime dynamic",
        "int8 (per-channel) and `torch.ao` dynamic int8.",
        "",
    ]
    for key in ("b32x64", "b1x64"):
        bs = key.split("x")[0][1:]
        lines += [f"#### Batch {bs} x 64", "",
                  "| point | FLOPs red. | torch fp32 | ORT fp32 | ORT fp32 / FLOPs red. | ORT int8 | torch int8 "
                  "| ORT fp32 vs torch | ORT int8 vs torch | dense ms torch / ORT |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in doc["points"]:
            c = r[key]
            same, vt = c["vs_same_runtime"], c["vs_torch_fp32_dense"]
            lines.append(f"| {r['point']} | {r['flops_reduction']:.2f}x | {_x(same['torch_fp32'])} | "
                         f"{_x(same['ort_fp32'])} | {same['ort_fp32']['speedup'] / r['flops_reduction']:.2f} | "
                         f"{_x(same['ort_int8'])} | {_x(same['torch_int8'])} | {_x(vt['ort_fp32'])} | "
                         f"{_x(vt['ort_int8'])} | {c['ms']['torch_dense']:.1f} / {c['ms']['ort_dense']:.1f} |")
        lines.append("")
    scored = [r for r in doc["points"] if r.get("test_accuracy")]
    if scored:
        lines += ["#### Test accuracy (872 sentences; no retraining after the cut)", "",
                  "| point | PyTorch fp32 | ONNX Runtime int8 | int8 - fp32 (pts) | torch.ao int8 | ONNX int8 MB / fp32 MB |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in scored:
            a = r["test_accuracy"]
            lines.append(f"| {r['point']} | {a['torch_fp32']:.4f} | {a['ort_int8']:.4f} | "
                         f"{100 * (a['ort_int8'] - a['torch_fp32']):+.2f} | {a['torch_int8']:.4f} | "
                         f"{r['onnx_int8_mb']:.1f} / {r['onnx_fp32_mb']:.1f} |")
        lines.append("")
    t = doc.get("torchao_dense")
    if t:
        lines += [f"#### torchao {t['version']} int8 (dynamic activations, int8 weights), eager, dense model", "",
                  "| shape | fp32 ms | torchao int8 | torch.ao int8 |", "|---|---:|---:|---:|"]
        for key in ("b32x64", "b1x64"):
            lines.append(f"| {key[1:]} | {t[key]['ms']['fp32']:.1f} | {_x(t[key]['torchao'])} | {_x(t[key]['torch_ao'])} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
