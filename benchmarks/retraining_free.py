"""Benchmark: retraining-free structured pruning of a fine-tuned MiniLM-L6 / SST-2 checkpoint.

No retraining anywhere in the main table: heads and FFN neurons are removed uniformly (25/50/75 % of
each, in every layer) by each registered criterion (random, l1, l2, gradient, fisher), then scored on
the 872 SST-2 test sentences as cut and after layer reconstruction (:mod:`autoprune.reconstruct`).
The same run prunes the same checkpoint to the same shapes with Torch-Pruning 1.6.1's Taylor
importance (its ``MetaPruner``, whole heads, no retraining), and with non-uniform per-layer
sparsities chosen from the Fisher scores under the FLOPs of the uniform 50/50 model (Kwon et al.
2022's mask search: for every number of kept heads, the largest number of kept neurons that fits the
budget, heads and neurons taken in global Fisher order, the pair with the largest kept Fisher sum).

Then the peer's operating point: a checkpoint made by 500 steps of the reference recipe from the
embedded ``minilm-l6`` base (cached under ``runs/``), pruned 50/50 by Torch-Pruning's Taylor and by
autoprune (Fisher + reconstruction; also the gradient criterion, plain cut), each followed by the
same 100 retraining steps (:func:`autoprune.train.finetune`, same batches, same seed).

Lever sweep: ridge, calibration size, calibration sentence length, calibration seed and the
per-unit-scales method, for Fisher at 50/50 and 75/75, scored on the validation rows the project
selects policies on (1,496 sentences of 15+ words) and on test; defaults are the validation choice.

Speed: each pruned shape against the dense model, interleaved (``autoprune.measure.measure_speed``:
dense, pruned, pruned, dense, ... after warm-up, one thread, batch 32 x 64), repeated in separate
runs; the table gives the median of the runs' speedups and their interquartile range. Wall times of
scoring and reconstruction are given with the process CPU time beside them (one thread: the CPU time
is what the step costs without other processes competing for the cores).

Results are cached per configuration in ``runs/retraining_free_cache.json`` (a killed run resumes);
``--fresh`` ignores the cache. Torch-Pruning is not a dependency of autoprune; for its arm:

    /work/main/.venv/bin/python -m pip install torch-pruning==1.6.1 --no-deps

    PYTHONPATH=. .venv/bin/python benchmarks/retraining_free.py [--checkpoint DIR] [--data DIR]
        [--calibration 1024] [--ridge R] [--skip-peer] [--skip-levers] [--fresh]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import DataConfig, ModelConfig  # noqa: E402
from autoprune.criteria import get_criterion, keep_top, n_removed  # noqa: E402
from autoprune.data import Split, TaskData, collate, load_task, train_batches  # noqa: E402
from autoprune.measure import count_flops, evaluate_split, measure_speed  # noqa: E402
from autoprune.models import get_adapter, load_model  # noqa: E402
from autoprune.reconstruct import DEFAULT_RIDGE, DenseTargets, reconstruct_layers  # noqa: E402
from autoprune.surgery import prune_structured  # noqa: E402
from autoprune.train import finetune  # noqa: E402

CRITERIA = ("random", "l1", "l2", "gradient", "fisher")
SPARSITIES = (0.25, 0.5, 0.75)
# chosen on the validation rows by the lever sweep of this script (2026-12-01): see docs/BENCHMARKS.md
DEFAULT_MIN_TOKENS = 12
TP_INSTALL = "/work/main/.venv/bin/python -m pip install torch-pruning==1.6.1 --no-deps"

log = logging.getLogger("retraining_free")


# ----------------------------------------------------------------------------- small helpers
class Cache:
    """Per-configuration results in one JSON file, written after every result (atomic replace)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.is_file() and not fresh:
            self.data = json.loads(path.read_text())

    def get(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.data:
            self.data[key] = fn()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)
        return self.data[key]


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def uniform_keep(scores: tuple[list[torch.Tensor], list[torch.Tensor]], heads: float, ffn: float):
    hs, ns = scores
    return ([keep_top(h, h.numel() - n_removed(h.numel(), heads)) for h in hs],
            [keep_top(n, n.numel() - n_removed(n.numel(), ffn)) for n in ns])


def shape_of(kept: tuple[list[list[int]], list[list[int]]]) -> tuple[list[int], list[int]]:
    return [len(h) for h in kept[0]], [len(n) for n in kept[1]]


def budget_keep(scores: tuple[list[torch.Tensor], list[torch.Tensor]], budget_flops: int, *, hidden: int,
                head_dim: int, seq_len: int, max_sparsity: float = 1.0) -> tuple[list[list[int]], list[list[int]]]:
    """Kwon et al. 2022's mask search under a FLOPs budget (per sequence of ``seq_len`` tokens).

    Every head costs the same and every neuron costs the same (:func:`autoprune.measure.count_flops`),
    so for a given number of kept heads the best choice is the top heads by Fisher score across all
    layers, and the same for neurons; the search tries every number of kept heads with the most
    neurons that still fit, and keeps the pair with the largest kept Fisher sum. Each layer keeps its
    best head and neuron, and with ``max_sparsity`` < 1 its best ``1 - max_sparsity`` of each.
    """
    hs, ns = scores
    head_cost = (2 * 4 * hidden * head_dim + 2 * 2 * seq_len * head_dim) * seq_len
    neuron_cost = 2 * 2 * hidden * seq_len
    forced_h = [set(keep_top(h, h.numel() - n_removed(h.numel(), max_sparsity))) for h in hs]
    forced_n = [set(keep_top(n, n.numel() - n_removed(n.numel(), max_sparsity))) for n in ns]
    rest_h = sorted(((float(h[u]), i, u) for i, h in enumerate(hs) for u in range(h.numel()) if u not in forced_h[i]),
                    reverse=True)
    rest_n = sorted(((float(n[u]), i, u) for i, n in enumerate(ns) for u in range(n.numel()) if u not in forced_n[i]),
                    reverse=True)
    left = budget_flops - sum(map(len, forced_h)) * head_cost - sum(map(len, forced_n)) * neuron_cost
    cum_h = [0.0]
    for s, _, _ in rest_h:
        cum_h.append(cum_h[-1] + s)
    cum_n = [0.0]
    for s, _, _ in rest_n:
        cum_n.append(cum_n[-1] + s)
    best = (-1.0, 0, 0)
    for a in range(len(rest_h) + 1):
        room = left - a * head_cost
        if room < 0:
            break
        b = min(len(rest_n), room // neuron_cost)
        total = cum_h[a] + cum_n[b]
        if total > best[0]:
            best = (total, a, int(b))
    _, a, b = best
    kh = [sorted(f) for f in forced_h]
    kn = [sorted(f) for f in forced_n]
    for _, i, u in rest_h[:a]:
        kh[i].append(u)
    for _, i, u in rest_n[:b]:
        kn[i].append(u)
    return [sorted(k) for k in kh], [sorted(k) for k in kn]


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from transformers import AutoTokenizer

        self.args = args
        self.cache = Cache(Path(args.cache), args.fresh)
        self.tok = AutoTokenizer.from_pretrained(args.checkpoint)
        d = Path(args.data)
        files = {s: str(d / f"{s}.tsv") for s in ("train", "validation", "test")}
        self.task: TaskData = load_task(DataConfig(files=files, max_length=args.max_length), self.tok)
        # the validation rows trials are scored on in the reference space (full sentences)
        self.val: Split = load_task(DataConfig(files=files, max_length=args.max_length, min_validation_words=15,
                                               max_validation_samples=2000), self.tok).validation
        self.dense = load_model(args.checkpoint).eval()
        self.targets: dict[str, DenseTargets] = {}
        self.fit = f"r{args.ridge}|{args.weighting}"  # the reconstruction settings, in cache keys
        self.scores: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    # --- data
    def calibration(self, n: int, seed: int, min_tokens: int, task: TaskData | None = None) -> list[dict]:
        """``n`` training rows (seeded sample, of at least ``min_tokens`` tokens), length-sorted batches of 32."""
        train = (task or self.task).train
        pool = [i for i in range(len(train)) if len(train.input_ids[i]) >= min_tokens]
        idx = random.Random(seed).sample(pool, min(n, len(pool)))
        idx.sort(key=lambda i: len(train.input_ids[i]))
        pad = self.task.pad_token_id
        return [collate([train.input_ids[i] for i in idx[j:j + 32]], [train.labels[i] for i in idx[j:j + 32]], pad)
                for j in range(0, len(idx), 32)]

    def accuracy(self, model: torch.nn.Module, split: Split | None = None) -> float:
        split = split if split is not None else self.task.test
        return evaluate_split(model, split, batch_size=64, pad_id=self.task.pad_token_id,
                              num_labels=self.task.num_labels).accuracy

    # --- pieces, cached in memory per calibration set
    def cal_key(self, n: int, seed: int, min_tokens: int) -> str:
        return f"n{n}-s{seed}-t{min_tokens}"

    def get_scores(self, crit: str, cal: list[dict], ck: str, model: torch.nn.Module | None = None,
                   tag: str = "") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        key = f"{tag}{crit}|{ck}"
        if key not in self.scores:
            m = model if model is not None else self.dense
            with Clock() as c:
                self.scores[key] = get_criterion(crit).unit_scores(m, iter(cal) if crit != "random" else None,
                                                                    seed=0)
            self.cache.data.setdefault(f"scoring|{key}", {"wall_s": c.wall, "cpu_s": c.cpu})
        return self.scores[key]

    def get_targets(self, cal: list[dict], ck: str, model: torch.nn.Module | None = None,
                    tag: str = "") -> DenseTargets:
        key = f"{tag}{ck}"
        if key not in self.targets:
            with Clock() as c:
                self.targets[key] = DenseTargets.compute(model if model is not None else self.dense, cal)
            self.cache.data.setdefault(f"targets|{key}", {"wall_s": c.wall, "cpu_s": c.cpu,
                                                          "tokens": self.targets[key].tokens})
        return self.targets[key]

    def speed(self, key: str, model: torch.nn.Module) -> dict[str, Any]:
        a = self.args

        def run() -> dict[str, Any]:
            reps = [measure_speed(self.dense, model, batch_size=32, seq_len=64, threads=a.threads,
                                  warmup=3, repeats=a.repeats, batch1=False) for _ in range(a.speed_runs)]
            q1, med, q3 = quartiles([r.speedup for r in reps])
            return {"speedup": med, "speedup_q1": q1, "speedup_q3": q3,
                    "dense_ms": statistics.median(r.dense_ms for r in reps),
                    "pruned_ms": statistics.median(r.pruned_ms for r in reps),
                    "runs": a.speed_runs, "repeats": a.repeats,
                    "flops_reduction": count_flops(self.dense, 64, 32) / count_flops(model, 64, 32)}

        return self.cache.get(f"speed|{key}", run)

    def prune_and_fit(self, kept, targets: DenseTargets, *, ridge: float, method: str = "projection",
                      weighting: str | None = None, val: bool = False,
                      dense: torch.nn.Module | None = None) -> dict[str, Any]:
        """Cut, score; re-fit, score. Returns the accuracies and the reconstruction's time."""
        cut = prune_structured(copy.deepcopy(dense if dense is not None else self.dense), *kept)
        out: dict[str, Any] = {"acc_cut": self.accuracy(cut)}
        if val:
            out["val_cut"] = self.accuracy(cut, self.val)
        with Clock() as c:
            recs = reconstruct_layers(cut, targets, ridge=ridge, method=method,  # type: ignore[arg-type]
                                      weighting=weighting or self.args.weighting)  # type: ignore[arg-type]
        out.update({"acc_recon": self.accuracy(cut), "recon_wall_s": c.wall, "recon_cpu_s": c.cpu,
                    "ffn_error_after_last": recs[-1]["ffn_error_after"],
                    "ffn_error_before_last": recs[-1]["ffn_error_before"]})
        if val:
            out["val_recon"] = self.accuracy(cut, self.val)
        out["_model"] = cut
        return out

    # --- arms
    def uniform(self) -> list[dict[str, Any]]:
        a = self.args
        ck = self.cal_key(a.calibration, a.seed, a.min_tokens)
        rows = []
        cal = None
        for crit in a.criteria:
            for sp in a.sparsities:
                key = f"uniform|{crit}|{sp}|{ck}|{self.fit}"
                if key not in self.cache.data:
                    cal = cal or self.calibration(a.calibration, a.seed, a.min_tokens)
                    scores = self.get_scores(crit, cal, ck)
                    targets = self.get_targets(cal, ck)
                    kept = uniform_keep(scores, sp, sp)
                    res = self.prune_and_fit(kept, targets, ridge=a.ridge)
                    model = res.pop("_model")
                    res["speed"] = self.speed(f"uniform|{sp}", model)
                    self.cache.get(key, lambda: res)
                row = dict(self.cache.data[key], criterion=crit, sparsity=sp)
                row["scoring"] = self.cache.data.get(f"scoring|{crit}|{ck}")
                rows.append(row)
                log.info("%-8s %.0f%%: cut %.4f, reconstructed %.4f (%.1f s), speedup %.2fx", crit, 100 * sp,
                         row["acc_cut"], row["acc_recon"], row["recon_wall_s"], row["speed"]["speedup"])
        return rows

    def torch_pruning(self, model: torch.nn.Module, cal: list[dict], sp: float) -> tuple[torch.nn.Module, float]:
        """Torch-Pruning's MetaPruner with its Taylor importance: whole heads (q/k/v grouped by head) and
        FFN neurons at ``sp``, the hidden size left alone (the output projections are not roots)."""
        import torch_pruning as tp

        m = copy.deepcopy(model).eval()
        t0 = time.perf_counter()
        m.zero_grad(set_to_none=True)
        for b in cal:  # Taylor needs dL/dw: the summed gradient over the calibration batches
            m(**b).loss.backward()
        adapter = get_adapter(m)
        layers = adapter.layers(m)
        num_heads, ignored = {}, [m.classifier]
        pooler = getattr(adapter.base(m), "pooler", None)
        if pooler is not None:
            ignored.append(pooler)
        for p in layers:
            att = p.attention
            for lin in (att.query, att.key, att.value):
                num_heads[lin] = p.num_heads
            ignored += [p.attn_out, p.ffn_out]
        ex = {k: v[:2] for k, v in cal[0].items() if k != "labels"}
        pruner = tp.pruner.MetaPruner(m, ex, importance=tp.importance.TaylorImportance(), global_pruning=False,
                                      pruning_ratio=sp, num_heads=num_heads, prune_num_heads=True,
                                      prune_head_dims=False, head_pruning_ratio=sp, ignored_layers=ignored,
                                      output_transform=lambda out: out.logits.sum())
        pruner.step()
        for p in layers:
            att = p.attention
            att.num_attention_heads = pruner.num_heads[att.query]
            att.all_head_size = att.query.out_features
        m.zero_grad(set_to_none=True)
        m.eval()
        return m, time.perf_counter() - t0

    @staticmethod
    def kept_by_rows(pruned: torch.nn.Module, dense: torch.nn.Module) -> tuple[list[list[int]], list[list[int]]]:
        """Which heads / neurons of ``dense`` a model cut by another tool kept, found by matching the rows
        of the first slice each unit owns (BERT: the query rows of a head, the intermediate row of a neuron)."""
        kh, kn = [], []
        for p, q in zip(get_adapter(pruned).layers(pruned), get_adapter(dense).layers(dense)):
            hd = q.head_slices[0].linear.weight.detach().reshape(q.num_heads, -1)
            hp = p.head_slices[0].linear.weight.detach().reshape(-1, hd.shape[1])
            kh.append(sorted(torch.cdist(hp, hd).argmin(1).tolist()))
            nd = q.neuron_slices[0].linear.weight.detach()
            np_ = p.neuron_slices[0].linear.weight.detach()
            kn.append(sorted(torch.cdist(np_, nd).argmin(1).tolist()))
        return kh, kn

    def tp_arm(self) -> list[dict[str, Any]]:
        a = self.args
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print(f"\n# Torch-Pruning arm skipped: torch_pruning is not installed; for it run: {TP_INSTALL}")
            return []
        ck = self.cal_key(a.calibration, a.seed, a.min_tokens)
        rows = []
        cal = None
        for sp in a.sparsities:
            key = f"tp|{sp}|{ck}|{self.fit}"

            def run() -> dict[str, Any]:
                nonlocal cal
                cal = cal or self.calibration(a.calibration, a.seed, a.min_tokens)
                m, secs = self.torch_pruning(self.dense, cal, sp)
                kh, kn = self.kept_by_rows(m, self.dense)
                ours = uniform_keep(self.get_scores("gradient", cal, ck), sp, sp)
                same_h = sum(len(set(x) & set(y)) for x, y in zip(kh, ours[0])) / max(1, sum(map(len, kh)))
                same_n = sum(len(set(x) & set(y)) for x, y in zip(kn, ours[1])) / max(1, sum(map(len, kn)))
                ref = prune_structured(copy.deepcopy(self.dense), kh, kn)  # TP's units, autoprune's reconstruction
                rec = self.prune_and_fit((kh, kn), self.get_targets(cal, ck), ridge=a.ridge)
                rec.pop("_model")
                return {"acc": self.accuracy(m), "seconds": secs, "shape": shape_of((kh, kn)),
                        "same_heads_as_gradient": same_h, "same_neurons_as_gradient": same_n,
                        "acc_same_units_autoprune_cut": self.accuracy(ref), "acc_tp_units_reconstructed":
                        rec["acc_recon"], "speed": self.speed(f"tp|{sp}", m)}

            row = dict(self.cache.get(key, run), sparsity=sp)
            rows.append(row)
            log.info("torch-pruning taylor %.0f%%: %.4f (%.1f s)", 100 * sp, row["acc"], row["seconds"])
        return rows

    def nonuniform(self) -> list[dict[str, Any]]:
        """Kwon's mask search at the FLOPs of uniform 50/50, without and with a cap on a layer's sparsity."""
        return [dict(self._nonuniform(cap), max_layer_sparsity=cap) for cap in (1.0, 0.75)]

    def _nonuniform(self, cap: float, seed: int | None = None) -> dict[str, Any]:
        """One non-uniform policy; its speed is measured for the main calibration sample only."""
        a = self.args
        seed = a.seed if seed is None else seed
        ck = self.cal_key(a.calibration, seed, a.min_tokens)
        key = f"nonuniform|fisher|0.5|cap{cap}|{ck}|{self.fit}"

        def run() -> dict[str, Any]:
            cal = self.calibration(a.calibration, seed, a.min_tokens)
            scores = self.get_scores("fisher", cal, ck)
            uni = prune_structured(copy.deepcopy(self.dense), *uniform_keep(scores, 0.5, 0.5))
            budget = count_flops(uni, 64, 1)
            adapter = get_adapter(self.dense)
            kept = budget_keep(scores, budget, hidden=adapter.hidden_size(self.dense),
                               head_dim=adapter.head_dim(self.dense), seq_len=64, max_sparsity=cap)
            res = self.prune_and_fit(kept, self.get_targets(cal, ck), ridge=a.ridge, val=True)
            model = res.pop("_model")
            heads, ffn = shape_of(kept)
            res.update({"heads_per_layer": heads, "ffn_per_layer": ffn, "budget_flops": budget,
                        "flops": count_flops(model, 64, 1)})
            if seed == a.seed:
                res["speed"] = self.speed(f"nonuniform|cap{cap}|{ck}", model)
            return res

        return self.cache.get(key, run)

    def timing(self) -> dict[str, Any]:
        """From scratch: Fisher scoring, dense targets, the first 50/50 reconstruction (which also derives
        the targets' token weights); then the same reconstruction again, the targets reused."""
        a = self.args
        ck = self.cal_key(a.calibration, a.seed, a.min_tokens)

        def run() -> dict[str, Any]:
            cal = self.calibration(a.calibration, a.seed, a.min_tokens)
            out: dict[str, Any] = {}
            with Clock() as c:
                scores = get_criterion("fisher").unit_scores(self.dense, iter(cal))
            out["scoring_wall_s"], out["scoring_cpu_s"] = c.wall, c.cpu
            with Clock() as c:
                targets = DenseTargets.compute(self.dense, cal)
            out["targets_wall_s"], out["targets_cpu_s"] = c.wall, c.cpu
            kept = uniform_keep(scores, 0.5, 0.5)
            for run_name in ("first", "reused"):
                m = prune_structured(copy.deepcopy(self.dense), *kept)
                with Clock() as c:
                    reconstruct_layers(m, targets, ridge=a.ridge, weighting=a.weighting)
                out[f"recon_{run_name}_wall_s"], out[f"recon_{run_name}_cpu_s"] = c.wall, c.cpu
            out["tokens"] = targets.tokens
            return out

        return self.cache.get(f"timing|fisher|0.5|{ck}|{self.fit}", run)

    def seeds(self) -> list[dict[str, Any]]:
        """The rows the accuracy targets read, for every calibration sample of ``--target-seeds``."""
        a = self.args
        rows = []
        for seed in a.target_seeds:
            ck = self.cal_key(a.calibration, seed, a.min_tokens)
            cal: list[dict] | None = None
            for crit in ("gradient", "fisher"):
                for sp in (0.5, 0.75):
                    def run() -> dict[str, Any]:
                        nonlocal cal
                        cal = cal or self.calibration(a.calibration, seed, a.min_tokens)
                        res = self.prune_and_fit(uniform_keep(self.get_scores(crit, cal, ck), sp, sp),
                                                 self.get_targets(cal, ck), ridge=a.ridge)
                        res["speed"] = self.speed(f"uniform|{sp}", res.pop("_model"))
                        return res

                    r = self.cache.get(f"uniform|{crit}|{sp}|{ck}|{self.fit}", run)  # the main table's key
                    rows.append({"kind": crit, "sparsity": sp, "seed": seed, "acc_cut": r["acc_cut"],
                                 "acc_recon": r["acc_recon"]})
            for cap in (1.0, 0.75):
                r = self._nonuniform(cap, seed)
                rows.append({"kind": f"fisher non-uniform, cap {cap:g}", "sparsity": 0.5, "seed": seed,
                             "acc_cut": r["acc_cut"], "acc_recon": r["acc_recon"], "val_recon": r["val_recon"]})
            self.targets.pop(ck, None)
        return rows

    def peer(self) -> dict[str, Any]:
        """500-step checkpoint of the reference recipe; TP Taylor vs autoprune at 50/50, + the same 100 steps."""
        a = self.args
        ck = self.cal_key(a.calibration, a.seed, a.min_tokens)
        out_dir = Path(a.runs) / "peer_minilm_l6_sst2_500"
        if not (out_dir / "metrics.json").is_file():
            from transformers import AutoTokenizer

            base = ModelConfig(name_or_path="minilm-l6").resolve()
            base_tok = AutoTokenizer.from_pretrained(base)
            if base_tok.get_vocab() != self.tok.get_vocab():
                raise SystemExit("the base model's vocabulary differs from the checkpoint's; this benchmark tokenises "
                                 "once with the checkpoint's tokenizer")
            model = load_model(base, num_labels=self.task.num_labels, pooling="cls")
            with Clock() as c:
                finetune(model, train_batches(self.task.train, 32, seed=0, pad_id=self.task.pad_token_id,
                                              padding="bucketed", max_length=a.max_length),
                         steps=a.peer_steps, learning_rate=3e-5, warmup_ratio=0.06, weight_decay=0.01, seed=0,
                         desc="500-step checkpoint", progress=False, checkpoint=out_dir.with_suffix(".ckpt"))
            tmp = out_dir.with_name(out_dir.name + ".tmp")
            for d in (tmp, out_dir):
                if d.exists():
                    import shutil

                    shutil.rmtree(d)
            model.save_pretrained(tmp)
            base_tok.save_pretrained(tmp)
            (tmp / "metrics.json").write_text(json.dumps({"steps": a.peer_steps, "train_wall_s": c.wall,
                                                          "test_accuracy": self.accuracy(model)}))
            os.replace(tmp, out_dir)
        start = load_model(str(out_dir)).eval()
        dense_acc = json.loads((out_dir / "metrics.json").read_text())["test_accuracy"]

        def retrain(model: torch.nn.Module) -> float:
            finetune(model, train_batches(self.task.train, 32, seed=1, pad_id=self.task.pad_token_id,
                                          padding="bucketed", max_length=a.max_length),
                     steps=a.retrain_steps, learning_rate=a.retrain_lr, warmup_ratio=0.1, weight_decay=0.01, seed=1,
                     desc="retrain", progress=False)
            return self.accuracy(model.eval())

        cal = None

        def arm(name: str) -> dict[str, Any]:
            def run() -> dict[str, Any]:
                nonlocal cal
                cal = cal or self.calibration(a.calibration, a.seed, a.min_tokens)
                if name == "torch_pruning_taylor":
                    m, _ = self.torch_pruning(start, cal, 0.5)
                    before = self.accuracy(m)
                elif name == "gradient_cut":
                    m = prune_structured(copy.deepcopy(start), *uniform_keep(
                        self.get_scores("gradient", cal, ck, model=start, tag="peer:"), 0.5, 0.5))
                    before = self.accuracy(m)
                else:
                    scores = self.get_scores("fisher", cal, ck, model=start, tag="peer:")
                    res = self.prune_and_fit(uniform_keep(scores, 0.5, 0.5),
                                             self.get_targets(cal, ck, model=start, tag="peer:"), ridge=a.ridge,
                                             dense=start)
                    m, before = res["_model"], res["acc_recon"]
                with Clock() as c:
                    after = retrain(m)
                return {"acc_before_retraining": before, "acc_after_retraining": after, "retrain_wall_s": c.wall}
            return self.cache.get(f"peer|{name}|{a.peer_steps}|{a.retrain_steps}|{a.retrain_lr}|{ck}|{self.fit}", run)

        arms: dict[str, Any] = {}
        try:
            import torch_pruning  # noqa: F401
            arms["torch_pruning_taylor"] = arm("torch_pruning_taylor")
        except ImportError:
            print(f"# peer arm: Torch-Pruning not installed ({TP_INSTALL}); only autoprune's arms run")
        arms["gradient_cut"] = arm("gradient_cut")
        arms["fisher_reconstructed"] = arm("fisher_reconstructed")
        return {"checkpoint_test_accuracy": dense_acc, "steps": a.peer_steps, "retrain_steps": a.retrain_steps,
                "retrain_lr": a.retrain_lr, "arms": arms}

    def levers(self) -> list[dict[str, Any]]:
        grid: list[dict[str, Any]] = []
        proj = {"method": "projection"}
        for w in ("uniform", "layernorm"):  # rows weighted uniformly / by the dense LayerNorm's 1/variance
            for ridge in (1e-4, 1e-3, 1e-2, 1e-1):
                for t in (0, 12):
                    grid.append({"n": 1024, "seed": 0, "min_tokens": t, "ridge": ridge, "weighting": w, **proj})
            for seed in (1, 2):
                for t in (0, 12):
                    grid.append({"n": 1024, "seed": seed, "min_tokens": t, "ridge": 1e-2, "weighting": w, **proj})
        grid.append({"n": 512, "seed": 0, "min_tokens": 12, "ridge": 1e-2, "weighting": "uniform", **proj})
        grid.append({"n": 2048, "seed": 0, "min_tokens": 12, "ridge": 1e-2, "weighting": "uniform", **proj})
        grid.append({"n": 1024, "seed": 0, "min_tokens": 12, "ridge": 1e-2, "weighting": "uniform",
                     "method": "scales"})
        for n, seeds in ((512, (0,)), (2048, (0, 1, 2)), (4096, (0,))):
            for seed in seeds:
                for t in (0, 12):
                    grid.append({"n": n, "seed": seed, "min_tokens": t, "ridge": 1e-2, "weighting": "layernorm",
                                 **proj})
        grid.append({"n": 1024, "seed": 0, "min_tokens": 12, "ridge": 1e-2, "weighting": "layernorm",
                     "method": "scales"})
        rows = []
        for g in grid:
            ck = self.cal_key(g["n"], g["seed"], g["min_tokens"])
            for sp in (0.5, 0.75):
                key = f"lever|fisher|{sp}|{ck}|r{g['ridge']}|{g['method']}"
                if g["weighting"] != "uniform":
                    key += f"|{g['weighting']}"

                def run() -> dict[str, Any]:
                    cal = self.calibration(g["n"], g["seed"], g["min_tokens"])
                    scores = self.get_scores("fisher", cal, ck)
                    res = self.prune_and_fit(uniform_keep(scores, sp, sp), self.get_targets(cal, ck),
                                             ridge=g["ridge"], method=g["method"], weighting=g["weighting"],
                                             val=True)
                    res.pop("_model")
                    return res

                row = dict(self.cache.get(key, run), sparsity=sp, **g)
                rows.append(row)
                log.info("lever %s %.0f%%: val %.4f test %.4f", g, 100 * sp, row["val_recon"], row["acc_recon"])
            # drop what this calibration set held in memory once its rows are done
            self.targets.pop(ck, None)
        return rows


# ----------------------------------------------------------------------------- report
def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report(b: Bench, dense_acc: float, uniform: list, tp: list, nonuni: list | None, peer: dict | None,
           levers: list, seeds: list, timing: dict | None, args: argparse.Namespace) -> dict[str, Any]:
    lines: list[str] = []
    lines.append(f"Dense checkpoint: SST-2 test accuracy {pct(dense_acc)} % (872 sentences). Calibration: "
                 f"{args.calibration} training sentences of >= {args.min_tokens} tokens (seed {args.seed}); "
                 f"reconstruction: projection method, ridge {args.ridge:g}, rows weighted {args.weighting}. "
                 f"Speedup: median of {args.speed_runs} interleaved runs of {args.repeats} pairs (IQR).")
    lines.append("")
    lines.append("| criterion | heads / FFN removed | speedup (IQR) | acc, cut | drop | acc, reconstructed | drop | "
                 "scoring s (CPU s) | reconstruction s (CPU s) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in uniform:
        s = r["speed"]
        sc = r.get("scoring") or {"wall_s": float("nan"), "cpu_s": float("nan")}
        lines.append(f"| {r['criterion']} | {r['sparsity']:.0%} / {r['sparsity']:.0%} | {s['speedup']:.2f}x "
                     f"({s['speedup_q1']:.2f}-{s['speedup_q3']:.2f}) | {pct(r['acc_cut'])} | "
                     f"{pct(dense_acc - r['acc_cut'])} | {pct(r['acc_recon'])} | {pct(dense_acc - r['acc_recon'])} | "
                     f"{sc['wall_s']:.1f} ({sc['cpu_s']:.1f}) | {r['recon_wall_s']:.1f} ({r['recon_cpu_s']:.1f}) |")
    for r in tp:
        s = r["speed"]
        lines.append(f"| Torch-Pruning 1.6.1 Taylor | {r['sparsity']:.0%} / {r['sparsity']:.0%} | {s['speedup']:.2f}x "
                     f"({s['speedup_q1']:.2f}-{s['speedup_q3']:.2f}) | {pct(r['acc'])} | {pct(dense_acc - r['acc'])} | "
                     f"- | - | {r['seconds']:.1f} (scoring + cut) | - |")
    for nu in nonuni or []:
        s = nu["speed"]
        cap = "" if nu["max_layer_sparsity"] >= 1 else f", layers <= {nu['max_layer_sparsity']:.0%} removed"
        lines.append(f"| fisher, non-uniform at the FLOPs of 50/50{cap} | heads {nu['heads_per_layer']}, FFN "
                     f"{nu['ffn_per_layer']} kept | {s['speedup']:.2f}x ({s['speedup_q1']:.2f}-{s['speedup_q3']:.2f}) | "
                     f"{pct(nu['acc_cut'])} | {pct(dense_acc - nu['acc_cut'])} | {pct(nu['acc_recon'])} | "
                     f"{pct(dense_acc - nu['acc_recon'])} | - | {nu['recon_wall_s']:.1f} "
                     f"({nu['recon_cpu_s']:.1f}) |")
    if tp:
        lines.append("")
        lines.append("Torch-Pruning's units against autoprune's gradient criterion at the same sparsity (share of "
                     "kept units in common), and TP's units cut by autoprune's surgery (the same model: a check) / "
                     "cut and reconstructed:")
        lines.append("")
        lines.append("| removed | same heads | same neurons | TP acc | same units, autoprune cut | TP's units "
                     "reconstructed |")
        lines.append("|---|---|---|---|---|---|")
        for r in tp:
            lines.append(f"| {r['sparsity']:.0%} | {r['same_heads_as_gradient']:.3f} | "
                         f"{r['same_neurons_as_gradient']:.3f} | {pct(r['acc'])} | "
                         f"{pct(r['acc_same_units_autoprune_cut'])} | {pct(r['acc_tp_units_reconstructed'])} |")
    if peer:
        lines.append("")
        lines.append(f"Peer operating point: checkpoint of {peer['steps']} steps of the reference recipe "
                     f"(test {pct(peer['checkpoint_test_accuracy'])} %), 50 % heads + 50 % FFN removed, then "
                     f"{peer['retrain_steps']} retraining steps (lr {peer['retrain_lr']:g}, batch 32, same batches):")
        lines.append("")
        lines.append("| start | acc before retraining | acc after retraining |")
        lines.append("|---|---|---|")
        for name, r in peer["arms"].items():
            lines.append(f"| {name} | {pct(r['acc_before_retraining'])} | {pct(r['acc_after_retraining'])} |")
    if levers:
        lines.append("")
        lines.append("Levers (Fisher + reconstruction; validation = the 1,496 validation sentences of 15+ words):")
        lines.append("")
        lines.append("| removed | calibration | min tokens | seed | ridge | method | rows weighted | val, cut | "
                     "val, rec. | test, cut | test, rec. | rec. s |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in levers:
            lines.append(f"| {r['sparsity']:.0%} | {r['n']} | {r['min_tokens']} | {r['seed']} | {r['ridge']:g} | "
                         f"{r['method']} | {r['weighting']} | {pct(r['val_cut'])} | {pct(r['val_recon'])} | "
                         f"{pct(r['acc_cut'])} | "
                         f"{pct(r['acc_recon'])} | {r['recon_wall_s']:.1f} |")

    choice = None
    if levers:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in levers:
            groups.setdefault((r["n"], r["min_tokens"], r["ridge"], r["weighting"], r["method"]), []).append(r)
        lines.append("")
        lines.append("Lever means over the calibration seeds (val / test accuracy of Fisher + reconstruction):")
        lines.append("")
        lines.append("| calibration | min tokens | ridge | rows weighted | method | seeds | val 50/50 | val 75/75 | "
                     "test 50/50 | test 75/75 |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")

        def mean(rs: list[dict[str, Any]], sp: float, k: str) -> float:
            xs = [r[k] for r in rs if r["sparsity"] == sp]
            return sum(xs) / len(xs) if xs else float("nan")

        for g, rs in groups.items():
            used = sorted({r["seed"] for r in rs})
            lines.append(f"| {g[0]} | {g[1]} | {g[2]:g} | {g[3]} | {g[4]} | {len(used)} | "
                         f"{pct(mean(rs, 0.5, 'val_recon'))} | {pct(mean(rs, 0.75, 'val_recon'))} | "
                         f"{pct(mean(rs, 0.5, 'acc_recon'))} | {pct(mean(rs, 0.75, 'acc_recon'))} |")
        # the choice compares every setting on the one calibration sample they all have
        at_n = {g: [r for r in rs if r["seed"] == args.seed] for g, rs in groups.items() if g[0] == args.calibration}
        at_n = {g: rs for g, rs in at_n.items() if rs}
        if at_n:
            def val(g: tuple) -> float:
                return sum(r["val_recon"] for r in at_n[g]) / len(at_n[g])

            best_g = max(at_n, key=val)
            mine = (args.calibration, args.min_tokens, args.ridge, args.weighting, "projection")
            choice = {"best": {"ridge": best_g[2], "min_tokens": best_g[1], "weighting": best_g[3],
                               "method": best_g[4], "val": val(best_g)},
                      "defaults_val": val(mine) if mine in at_n else None}

    # ---- targets: accuracies as the mean over the calibration samples (and the main sample's value)
    targets = []

    def target(name: str, value: float, limit: float, ok: bool) -> None:
        targets.append({"target": name, "value": value, "limit": limit, "met": ok})

    def acc_of(kind: str, sp: float) -> tuple[float, float, list[float]]:
        xs = [r for r in seeds if r["kind"] == kind and r["sparsity"] == sp]
        main = next(r["acc_recon"] for r in xs if r["seed"] == args.seed)
        vals = [r["acc_recon"] for r in xs]
        return sum(vals) / len(vals), main, vals

    if seeds:
        lines.append("")
        lines.append(f"Calibration samples (seeds {args.target_seeds}): test accuracy after reconstruction, the rows "
                     f"the targets read:")
        lines.append("")
        lines.append("| policy | removed | " + " | ".join(f"seed {s}" for s in args.target_seeds) + " | mean | "
                     "mean drop |")
        lines.append("|---|---|" + "---|" * len(args.target_seeds) + "---|---|")
        for kind, sp in sorted({(r["kind"], r["sparsity"]) for r in seeds}):
            m, _, vals = acc_of(kind, sp)
            lines.append(f"| {kind} | {sp:.0%} | " + " | ".join(pct(v) for v in vals) +
                         f" | {pct(m)} | {pct(dense_acc - m)} |")
        n = len(args.target_seeds)
        for sp, limit in ((0.5, 1.5), (0.75, 5.0)):
            best_kind = max(("gradient", "fisher"), key=lambda k: acc_of(k, sp)[0])
            m, main, _ = acc_of(best_kind, sp)
            target(f"{sp:.0%}/{sp:.0%}, best criterion ({best_kind}) + reconstruction, mean of {n} calibration "
                   f"samples (seed {args.seed} alone: {100 * (dense_acc - main):.2f}): drop <= {limit:g} points",
                   100 * (dense_acc - m), limit, dense_acc - m <= limit / 100)
            tp_sp = next((r for r in tp if r["sparsity"] == sp), None)
            if tp_sp and sp == 0.5:
                tpd = dense_acc - tp_sp["acc"]
                target(f"50/50: drop (mean of {n} samples) <= half of Torch-Pruning Taylor's ({100 * tpd:.2f})",
                       100 * (dense_acc - m), 100 * tpd / 2, dense_acc - m <= tpd / 2)
        caps = sorted({r["kind"] for r in seeds if "non-uniform" in r["kind"]})
        val_of = {c: sum(r["val_recon"] for r in seeds if r["kind"] == c) / n for c in caps}
        chosen = max(caps, key=lambda c: val_of[c])  # chosen on validation
        m, main, _ = acc_of(chosen, 0.5)
        nu_main = next((r for r in nonuni or [] if f"cap {r['max_layer_sparsity']:g}" in chosen), None)
        sp_txt = f"; {nu_main['speed']['speedup']:.2f}x against uniform 50/50's " \
                 f"{next(r['speed']['speedup'] for r in uniform if r['sparsity'] == 0.5):.2f}x" if nu_main else ""
        target(f"{chosen} (chosen on validation) at the FLOPs of 50/50 + reconstruction, mean of {n} samples "
               f"(seed {args.seed} alone: {100 * (dense_acc - main):.2f}{sp_txt}): drop <= 1.0 point",
               100 * (dense_acc - m), 1.0, dense_acc - m <= 0.01)
    if timing:
        t = timing
        total = t["scoring_wall_s"] + t["targets_wall_s"] + t["recon_first_wall_s"]
        total_cpu = t["scoring_cpu_s"] + t["targets_cpu_s"] + t["recon_first_cpu_s"]
        lines.append("")
        lines.append(f"Timing, Fisher at 50/50 from scratch ({t['tokens']} calibration tokens), wall s (CPU s): "
                     f"scoring {t['scoring_wall_s']:.1f} ({t['scoring_cpu_s']:.1f}), dense targets "
                     f"{t['targets_wall_s']:.1f} ({t['targets_cpu_s']:.1f}), reconstruction {t['recon_first_wall_s']:.1f} "
                     f"({t['recon_first_cpu_s']:.1f}); the next policy's reconstruction with the targets reused "
                     f"{t['recon_reused_wall_s']:.1f} ({t['recon_reused_cpu_s']:.1f}).")
        target(f"Fisher scoring + dense targets + reconstruction at 50/50 from scratch: < 60 s "
               f"(CPU {total_cpu:.1f} s)", total, 60.0, total < 60.0)
        target(f"reconstruction per policy with the dense targets reused: <= 10 s (CPU "
               f"{t['recon_reused_cpu_s']:.1f} s)", t["recon_reused_wall_s"], 10.0, t["recon_reused_wall_s"] <= 10.0)
    if peer and "torch_pruning_taylor" in peer["arms"]:
        gap = peer["arms"]["fisher_reconstructed"]["acc_after_retraining"] - \
            peer["arms"]["torch_pruning_taylor"]["acc_after_retraining"]
        target("peer point: Fisher + reconstruction + 100 steps >= Torch-Pruning Taylor + 100 steps + 1.0 point",
               100 * gap, 1.0, gap >= 0.01)
    lines.append("")
    lines.append("| target | measured | limit | met |")
    lines.append("|---|---|---|---|")
    for t in targets:
        lines.append(f"| {t['target']} | {t['value']:.2f} | {t['limit']:.2f} | {'yes' if t['met'] else 'no'} |")
    md = "\n".join(lines)
    return {"markdown": md, "targets": targets, "lever_choice": choice}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="/work/shared/models/minilm-l6-sst2")
    ap.add_argument("--data", default="/work/shared/data/sst2")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=1024, help="calibration training sentences")
    ap.add_argument("--min-tokens", type=int, default=DEFAULT_MIN_TOKENS,
                    help="calibration sentences have at least this many tokens ([CLS]/[SEP] included)")
    ap.add_argument("--seed", type=int, default=0, help="which calibration sentences")
    ap.add_argument("--target-seeds", nargs="+", type=int, default=[0, 1, 2],
                    help="calibration samples the accuracy targets are averaged over")
    ap.add_argument("--ridge", type=float, default=DEFAULT_RIDGE)
    ap.add_argument("--weighting", default="layernorm", choices=["layernorm", "uniform"],
                    help="reconstruction rows: weighted by the dense LayerNorm's 1/variance, or uniformly")
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    ap.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=11, help="interleaved pairs per speed run")
    ap.add_argument("--speed-runs", type=int, default=5, help="separate speed runs per shape (median, IQR)")
    ap.add_argument("--peer-steps", type=int, default=500)
    ap.add_argument("--retrain-steps", type=int, default=100)
    ap.add_argument("--retrain-lr", type=float, default=3e-5)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-levers", action="store_true")
    ap.add_argument("--levers-only", action="store_true", help="only the lever sweep (to choose the defaults)")
    ap.add_argument("--runs", default=str(ROOT / "runs"))
    ap.add_argument("--cache", default=str(ROOT / "runs" / "retraining_free_cache.json"))
    ap.add_argument("--fresh", action="store_true", help="ignore cached per-configuration results")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "retraining_free.json"))
    ap.add_argument("--markdown", default=str(ROOT / "runs" / "retraining_free.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("autoprune", "httpx", "torch_pruning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    b = Bench(args)
    dense_acc = b.cache.get(f"dense|{args.checkpoint}", lambda: b.accuracy(b.dense))
    print(f"# retraining-free pruning of {args.checkpoint}: dense SST-2 test accuracy {pct(dense_acc)} %")
    print(f"# torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s); speed: "
          f"{args.speed_runs} runs x {args.repeats} interleaved pairs at batch 32 x 64 per shape", flush=True)
    levers = [] if args.skip_levers else b.levers()
    uniform = [] if args.levers_only else b.uniform()
    tp = [] if args.levers_only else b.tp_arm()
    nonuni = b.nonuniform() if "fisher" in args.criteria and not args.levers_only else None
    seeds = [] if args.levers_only else b.seeds()
    timing = None if args.levers_only else b.timing()
    peer = None if args.skip_peer or args.levers_only else b.peer()
    rep = report(b, dense_acc, uniform, tp, nonuni, peer, levers, seeds, timing, args)
    print()
    print(rep["markdown"])
    if levers:
        ch = rep["lever_choice"]
        print(f"\n# lever sweep at {args.calibration} calibration sentences, seed {args.seed} (mean validation "
              f"accuracy of 50/50 and 75/75): best {ch['best']}; the defaults (ridge {args.ridge:g}, min tokens "
              f"{args.min_tokens}, {args.weighting}) reach {ch['defaults_val']}")
    print()
    for t in rep["targets"]:
        print(f"# target {'MET' if t['met'] else 'MISSED'}: {t['target']}: {t['value']:.2f} (limit {t['limit']:.2f})")
    result = {
        "date": _dt.date.today().isoformat(),
        "command": "PYTHONPATH=. python benchmarks/retraining_free.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), shared CPU",
        "settings": {k: v for k, v in vars(args).items() if k not in ("fresh",)},
        "dense_test_accuracy": dense_acc, "uniform": uniform, "torch_pruning": tp, "nonuniform": nonuni,
        "peer": peer, "levers": levers, "calibration_samples": seeds, "timing_from_scratch": timing,
        "targets": rep["targets"],
        "timing": {k: v for k, v in b.cache.data.items() if k.startswith(("scoring|", "targets|"))},
        "invocation_wall_s": time.perf_counter() - t_start,  # with cached configurations: less than the work
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(rep["markdown"] + "\n")
    print(f"\n# wrote {args.out} and {args.markdown}")


if __name__ == "__main__":
    main()
