"""GPU benchmark: a short search whose trials train on the GPU, speed measured on CUDA and on CPU.

The quick-start space (search_spaces/quickstart.yaml: MiniLM-L6 on a slice of SST-2) with
``gpus_per_trial`` (default 0.5: two trials share one GPU), ``--n-trials`` trials and three measurement
targets: eager PyTorch on ``cuda`` (batch 32 x 64, timed with device synchronisation; the search's speed
objective), eager PyTorch on CPU and ONNX Runtime on CPU (1 thread each). A local Ray is started and
finds the machine's GPUs. Prints one row per completed trial (accuracy, speedup in every target,
phase times) and writes the rows with the GPU's name to ``--out-json``.

    PYTHONPATH=. .venv/bin/python benchmarks/gpu_search.py [--n-trials 6] [--gpus-per-trial 0.5]

Without a GPU it stops with the one error autoprune gives for ``gpus_per_trial > 0`` on a machine without
one, before any study is created.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.errors import AutopruneError  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--gpus-per-trial", type=float, default=0.5)
    ap.add_argument("--run-dir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "gpu_search.json"))
    args = ap.parse_args()

    import torch
    import yaml

    from autoprune.search import run_search, space_from_dict

    base = ROOT / "search_spaces"
    raw = yaml.safe_load((base / "quickstart.yaml").read_text(encoding="utf-8"))
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="gpu_search_")
    raw["config"]["run_dir"] = str(Path(run_dir).resolve())
    raw["config"]["measure"] = {"threads": 1, "warmup": 3, "repeats": 15, "batch1": True, "targets": [
        {"runtime": "torch", "device": "cuda", "batch_size": 32, "seq_len": 64},
        {"runtime": "torch", "device": "cpu", "batch_size": 32, "seq_len": 64},
        {"runtime": "onnxruntime", "device": "cpu", "batch_size": 32, "seq_len": 64}], "objective": "torch-cuda"}
    raw["config"]["torch_threads"] = 1
    raw.update(n_trials=args.n_trials, gpus_per_trial=args.gpus_per_trial, trials_in_flight=2)
    space = space_from_dict(raw, str(base / "quickstart.yaml") + " (gpu_search)", base)
    t0 = time.time()
    study = run_search(space, progress=False)
    rows = []
    for t in study.get_trials(deepcopy=False):
        res = t.user_attrs.get("result")
        if not res or not res.get("targets"):
            continue
        tg = res["targets"]["targets"]
        rows.append({"trial": t.number, "accuracy": res["accuracy"], "dense_accuracy": res["dense_accuracy"],
                     "speedup": {k: v["speedup"] for k, v in tg.items()},
                     "speedup_b1": {k: v.get("speedup_b1") for k, v in tg.items()},
                     "dense_ms": {k: v["dense_ms"] for k, v in tg.items()},
                     "phase_seconds": res["phase_seconds"], "heads_per_layer": res["heads_per_layer"],
                     "ffn_per_layer": res["ffn_per_layer"]})
    doc = {"benchmark": "gpu_search", "date": dt.date.today().isoformat(),
           "command": " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/gpu_search.py", *sys.argv[1:]]),
           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "gpus_per_trial": args.gpus_per_trial,
           "wall_seconds": time.time() - t0, "trials": rows}
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"GPU {doc['gpu']}, gpus_per_trial {args.gpus_per_trial}, {len(rows)} trials, "
          f"{doc['wall_seconds'] / 60:.1f} min\n")
    print("| trial | val acc | dense acc | speedup torch-cuda | torch-cpu | onnxruntime-cpu | retrain s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["speedup"]
        print(f"| {r['trial']} | {r['accuracy']:.4f} | {r['dense_accuracy']:.4f} | {s['torch-cuda']:.2f}x | "
              f"{s['torch-cpu']:.2f}x | {s['onnxruntime-cpu']:.2f}x | {r['phase_seconds']['retrain']:.1f} |")


if __name__ == "__main__":
    try:
        main()
    except AutopruneError as e:  # no GPU, a runtime missing, bad data: one line, no traceback
        sys.exit(f"error: {e}")
