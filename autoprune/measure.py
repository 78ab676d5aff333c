"""Measurement: task metrics, interleaved latency against the dense model, analytic FLOPs, size.

Latency is measured in one process, dense and pruned *interleaved* (dense, pruned, dense, ...)
after warm-up, at a fixed thread count, on the same random token batch; the report gives the
median of each and their ratio. Noise on a shared machine hits both sides alike.

Example:
    >>> _median([3.0, 1.0, 2.0])
    2.0
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
import torch.nn as nn

from autoprune.results import EvalMetrics, SpeedReport

if TYPE_CHECKING:
    from autoprune.data import Split

logger = logging.getLogger(__name__)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[list[int], list[int]]:
    """(predictions, labels) over ``batches``; the model is put in eval mode."""
    from autoprune.devices import autocast

    was = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device  # batches follow the model (cpu or a GPU)
    preds: list[int] = []
    labels: list[int] = []
    for b in batches:
        lab = b.pop("labels")
        with autocast(device):
            logits = model(**{k: v.to(device) for k, v in b.items()}).logits
        preds += logits.argmax(-1).tolist()
        labels += lab.tolist()
    model.train(was)
    return preds, labels


def classification_metrics(preds: list[int], labels: list[int], num_labels: int) -> EvalMetrics:
    """Accuracy, macro-F1 and per-class recall."""
    n = len(labels)
    correct = sum(int(p == y) for p, y in zip(preds, labels))
    f1s, recalls = [], []
    for c in range(num_labels):
        tp = sum(1 for p, y in zip(preds, labels) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, labels) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, labels) if p != c and y == c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return EvalMetrics(accuracy=correct / max(n, 1), macro_f1=sum(f1s) / num_labels, per_class_recall=recalls, n=n)


def evaluate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], num_labels: int) -> EvalMetrics:
    preds, labels = predict(model, batches)
    return classification_metrics(preds, labels, num_labels)


def eval_batch_size(model: nn.Module, batch_size: int) -> int:
    """The batch size to score ``model`` at: ``batch_size``, or 1 for an int8 model
    (:class:`autoprune.onnx_export.OnnxClassifier`).

    Dynamic int8 quantizes each MatMul's input with one scale for the whole tensor, so in a batch a
    sentence's prediction depends on the other sentences and on their padding. Measured on the SST-2
    baseline with torch's dynamic int8 (dense, per-tensor int8, 872 test sentences): accuracy 0.868 at
    batch 128, 0.878 at 32, 0.882 at 1 (per-channel int8: 0.877, 0.891, 0.882).
    One sentence at a time is the only score that does not depend on how rows happen to be batched.
    A model being retrained quantization-aware (:func:`autoprune.quantize.fake_quantized`) scores in
    batches: in eval mode its simulated scale covers each sentence's own tokens, as at batch 1.

    Example:
        >>> eval_batch_size(nn.Linear(2, 2), 128)
        128
    """
    from autoprune.onnx_export import is_int8

    return 1 if is_int8(model) else batch_size


def evaluate_split(model: nn.Module, split: "Split", *, batch_size: int, pad_id: int, num_labels: int) -> EvalMetrics:
    """Score ``model`` on a tokenised split in length-sorted batches of ``batch_size`` (one row at a
    time for an int8 model, see :func:`eval_batch_size`)."""
    from autoprune.data import eval_batches

    return evaluate(model, eval_batches(split, eval_batch_size(model, batch_size), pad_id), num_labels)


# ----------------------------------------------------------------------------- size
def count_params(model: nn.Module) -> int:
    """Parameters, counting a pruned (masked) weight's zeros too (an int8 policy is counted on its float
    model: ONNX Runtime's int8 file holds the same weights)."""
    return int(sum(p.numel() for p in model.parameters()))


def nonzero_params(model: nn.Module) -> int:
    return int(sum((p != 0).sum().item() for p in model.parameters()))


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's state dict serialised as safetensors (an int8 model: its ONNX file)."""
    from autoprune.onnx_export import is_int8

    if is_int8(model):
        return model.path.stat().st_size
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in model.state_dict().items()}))


# ----------------------------------------------------------------------------- FLOPs
def count_flops(model: nn.Module, seq_len: int, batch_size: int = 1) -> int:
    """Analytic multiply-add FLOPs (2 per MAC) of the encoder for ``batch_size`` x ``seq_len`` tokens.

    Per layer, the adapter's :meth:`~autoprune.models.Adapter.layer_macs`: every Linear a head or FFN
    neuron owns, per token (for BERT ``4 * hidden * heads * d`` for q/k/v/output and ``2 * hidden * ffn``
    for the FFN; a gated FFN has three matrices), plus attention scores and the weighted sum
    ``2 * seq_len * heads * d`` per token, plus what an architecture adds (DeBERTa's relative-position
    scores). Embeddings, layer norms and the classifier head are left out (they are not pruned).
    """
    from autoprune.models import get_adapter

    adapter = get_adapter(model)
    return int(sum(2 * adapter.layer_macs(parts, seq_len, batch_size) for parts in adapter.layers(model)))


# ----------------------------------------------------------------------------- latency
def random_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(vocab_size, 6), (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def interleaved_times(fns: Sequence[Callable[[], object]], *, warmup: int, repeats: int,
                      sync: Callable[[], None] | None = None) -> list[list[float]]:
    """Milliseconds of every call of each of ``fns``, run interleaved in one process.

    ``warmup`` rounds call each function once in order (untimed); then ``repeats`` timed rounds call
    each once, the first to run rotating from round to round so no function always runs on a warmer
    cache (with two: a, b, then b, a, ...). ``sync`` (e.g. ``torch.cuda.synchronize``) is called before
    and after each timed call, so asynchronous device work is inside the time it belongs to.

    Example:
        >>> ts = interleaved_times([lambda: None, lambda: sum(range(1000))], warmup=1, repeats=3)
        >>> [len(t) for t in ts]
        [3, 3]
    """
    n = len(fns)
    for _ in range(warmup):
        for fn in fns:
            fn()
    if sync is not None:
        sync()
    out: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for j in range(n):
            k = (i + j) % n
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            fns[k]()
            if sync is not None:
                sync()
            out[k].append((time.perf_counter() - t0) * 1000.0)
    return out


def spread(ms: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of a list of timings.

    Example:
        >>> spread([1.0, 2.0, 3.0, 4.0, 5.0])
        (2.0, 3.0, 4.0)
    """
    q1, q2, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return float(q1), float(q2), float(q3)


def relative_spread(q1: float, median: float, q3: float) -> float:
    """Interquartile range as a fraction of the median (0 for a perfectly steady measurement).

    Example:
        >>> relative_spread(1.8, 2.0, 2.2)
        0.2
    """
    return round((q3 - q1) / median, 12) if median > 0 else float("inf")


@torch.inference_mode()
def _interleaved(dense: nn.Module, pruned: nn.Module, batch: dict[str, torch.Tensor], warmup: int, repeats: int,
                 max_spread: float = float("inf"), max_repeats: int = 0) -> tuple[float, float, list[float]]:
    """Median dense and pruned ms and the per-round speedups; rounds are added ``repeats`` at a time
    while the per-round speedup's relative spread exceeds ``max_spread``, up to ``max_repeats``."""
    td, tp = interleaved_times([lambda: dense(**batch), lambda: pruned(**batch)], warmup=warmup, repeats=repeats)
    ratios = [d / p for d, p in zip(td, tp)]
    while relative_spread(*spread(ratios)) > max_spread and len(ratios) + repeats <= max_repeats:
        more_d, more_p = interleaved_times([lambda: dense(**batch), lambda: pruned(**batch)], warmup=1,
                                           repeats=repeats)
        td, tp = td + more_d, tp + more_p
        ratios += [d / p for d, p in zip(more_d, more_p)]
    return _median(td), _median(tp), ratios


def measure_speed(dense: nn.Module, pruned: nn.Module, *, batch_size: int = 32, seq_len: int = 64,
                  threads: int = 1, warmup: int = 3, repeats: int = 15, batch1: bool = True,
                  max_spread: float = 0.10, max_repeats: int = 45) -> SpeedReport:
    """Median latency of ``dense`` and ``pruned``, measured interleaved, and the speedup ratio.

    The speedup's spread is the interquartile range of the per-round ratios. When it is wider than
    ``max_spread`` (a fraction of the median) the measurement takes ``repeats`` more rounds, up to
    ``max_repeats``; a spread that stays wider marks the report ``noisy``.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    dense.eval()
    pruned.eval()
    try:
        vocab = int(getattr(dense.config, "vocab_size", 1000))
        d_ms, p_ms, ratios = _interleaved(dense, pruned, random_batch(vocab, batch_size, seq_len), warmup, repeats,
                                          max_spread, max_repeats)
        q1, _, q3 = spread(ratios)
        rep = SpeedReport(batch_size=batch_size, seq_len=seq_len, threads=threads, repeats=repeats,
                          dense_ms=d_ms, pruned_ms=p_ms, speedup=d_ms / p_ms, speedup_q1=q1, speedup_q3=q3,
                          rounds=len(ratios), noisy=relative_spread(q1, d_ms / p_ms, q3) > max_spread)
        if batch1:
            d1, p1, _ = _interleaved(dense, pruned, random_batch(vocab, 1, seq_len, seed=1), warmup, repeats)
            rep.dense_ms_b1, rep.pruned_ms_b1, rep.speedup_b1 = d1, p1, d1 / p1
    finally:
        torch.set_num_threads(prev)
    logger.info("latency b%dx%d: dense %.2f ms, pruned %.2f ms -> %.2fx (quartiles %.2f-%.2f over %d rounds%s)",
                batch_size, seq_len, rep.dense_ms, rep.pruned_ms, rep.speedup, rep.speedup_q1, rep.speedup_q3,
                rep.rounds, ", noisy" if rep.noisy else "")
    return rep


def speed_flags(speedup: float, flops_reduction: float, *, quantized: bool = False, noisy: bool = False) -> list[str]:
    """Warnings a measured speedup deserves: ``noisy`` (its spread stayed wide), ``slower than half of
    dense`` (below 0.5x), ``faster than its FLOPs allow`` (above 1.5x the FLOPs reduction; 6x for int8,
    whose kernels may also run up to 4x faster than float).

    Example:
        >>> speed_flags(2.0, 2.1)
        []
        >>> speed_flags(10.0, 2.0)
        ['faster than its FLOPs allow']
    """
    flags = ["noisy"] if noisy else []
    if speedup < 0.5:
        flags.append("slower than half of dense")
    if speedup > 1.5 * flops_reduction * (4.0 if quantized else 1.0):
        flags.append("faster than its FLOPs allow")
    return flags
