"""One trial: load the dense baseline, prune by one policy, retrain, evaluate, measure.

``run_trial(config, policy) -> TrialResult`` is the one function a Ray worker runs. It takes and
returns plain data; nothing here knows about Optuna.

Flow: dense baseline (cached) -> [score -> cut -> retrain] x iterative_steps -> optional int8
dynamic quantization -> evaluate on the validation split -> interleaved latency against the dense
model, FLOPs, parameters, size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from autoprune.config import RunConfig
from autoprune.policy import PruningPolicy
from autoprune.quantize import fake_quantized, quantize_dynamic_int8
from autoprune.results import EvalMetrics, TrialResult

logger = logging.getLogger(__name__)

OnEval = Callable[[int, float], bool]


class TrialStopped(Exception):
    """Raised when ``on_eval`` asks to stop a trial early (it cannot reach the accuracy floor)."""

    def __init__(self, reason: str, history: list[list[float]]):
        super().__init__(reason)
        self.reason = reason
        self.history = history


@dataclass
class _Context:
    """Per-process cache: the dense baseline, its tokenised data and its metrics on the eval split."""

    baseline_dir: Path
    tokenizer: Any
    task: Any
    dense: nn.Module
    dense_eval: EvalMetrics
    num_layers: int
    dense_test: EvalMetrics | None = None

    def dense_on(self, role: str, batch_size: int) -> EvalMetrics:
        """Dense metrics on ``validation`` (computed at load) or ``test`` (computed once, on demand)."""
        from autoprune.measure import evaluate_split

        if role == "validation":
            return self.dense_eval
        if self.dense_test is None:
            self.dense_test = evaluate_split(self.dense, self.task.test, batch_size=batch_size,
                                             pad_id=self.task.pad_token_id, num_labels=self.task.num_labels)
        return self.dense_test


_CONTEXTS: dict[str, _Context] = {}


def _context(config: RunConfig, *, progress: bool) -> _Context:
    from autoprune.measure import evaluate_split
    from autoprune.models import get_adapter, load_model
    from autoprune.train import ensure_baseline, load_task_data, load_tokenizer

    key = config.model_dump_json()
    if key in _CONTEXTS:
        return _CONTEXTS[key]
    bdir = ensure_baseline(config, progress=progress)
    tok = load_tokenizer(config)
    task = load_task_data(config, tok)
    dense = load_model(str(bdir), num_labels=task.num_labels)
    dense.eval()
    dense_eval = evaluate_split(dense, task.validation, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                                num_labels=task.num_labels)
    ctx = _Context(bdir, tok, task, dense, dense_eval, len(get_adapter(dense).layers(dense)))
    _CONTEXTS.clear()  # keep one baseline in memory per worker
    _CONTEXTS[key] = ctx
    return ctx


def _structured_step(model: nn.Module, policy: PruningPolicy, frac: float, orig_heads: list[int],
                     orig_ffn: list[int], kept_heads: list[list[int]], kept_neurons: list[list[int]],
                     seed: int, calib: Any) -> None:
    """Score the model as it stands and cut it to ``frac`` of the policy's target sparsity."""
    from autoprune.criteria import get_criterion, keep_top, n_removed
    from autoprune.surgery import prune_structured

    hs, ns = get_criterion(policy.criterion).unit_scores(model, calib, seed=seed)
    local_h, local_n = [], []
    for i in range(len(orig_heads)):
        sh = (policy.head_sparsity or [0.0] * len(orig_heads))[i] * frac
        sn = (policy.ffn_sparsity or [0.0] * len(orig_ffn))[i] * frac
        kh = keep_top(hs[i], orig_heads[i] - n_removed(orig_heads[i], sh))
        kn = keep_top(ns[i], orig_ffn[i] - n_removed(orig_ffn[i], sn))
        local_h.append(kh)
        local_n.append(kn)
        kept_heads[i] = [kept_heads[i][j] for j in kh]
        kept_neurons[i] = [kept_neurons[i][j] for j in kn]
    prune_structured(model, local_h, local_n)


def unstructured_masks(model: nn.Module, policy: PruningPolicy, frac: float, seed: int,
                       calib: Any = None) -> dict[str, torch.Tensor]:
    """Masks removing ``round(s * numel)`` lowest-scored weights of every prunable Linear of each layer."""
    from autoprune.criteria import get_criterion
    from autoprune.models import get_adapter

    scores = get_criterion(policy.criterion).model_weight_scores(model, calib, seed=seed)
    names = {id(m): n for n, m in model.named_modules()}
    masks = {}
    for i, parts in enumerate(get_adapter(model).layers(model)):
        s = (policy.weight_sparsity or [])[i] * frac
        for lin in parts.linears():
            name = names[id(lin)]
            sc = scores[name].flatten()
            k = min(int(round(s * sc.numel())), sc.numel() - 1)
            mask = torch.ones_like(sc)
            if k > 0:
                mask[torch.topk(sc, k, largest=False, sorted=False).indices] = 0.0
            masks[name] = mask.view_as(scores[name])
    return masks


def _speed_label(unstructured: bool, quantized: bool) -> str:
    """How to read a trial's speedup: zeroed weights make no dense kernel faster, int8 kernels do."""
    if not unstructured:
        return "measured"
    return "int8 measured; zeros size-only" if quantized else "size-only"


def run_trial(config: RunConfig, policy: PruningPolicy, *, on_eval: OnEval | None = None,
              save_dir: str | None = None, progress: bool = False, final_split: str = "validation") -> TrialResult:
    """Prune the dense baseline by ``policy``, retrain, evaluate on the validation split, measure.

    ``on_eval(step, accuracy)`` is called at the middle of every retraining phase; returning True
    stops the trial with :class:`TrialStopped`. ``final_split`` (``validation`` or ``test``) is the
    split of the reported accuracy, for the pruned and the dense model alike; the search always
    selects on ``validation``, benchmarks re-measure the chosen policies on ``test``.
    ``save_dir`` saves the pruned, fine-tuned model
    (``save_pretrained`` + tokenizer; its config records the per-layer shape in ``autoprune``).

    Example (tiny model from tests/conftest.py; see tests/test_trial.py):
        >>> # res = run_trial(config, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=10))
        >>> # res.speedup, res.accuracy_drop
    """
    from autoprune.data import train_batches
    from autoprune.criteria import get_criterion
    from autoprune.measure import count_flops, count_params, evaluate_split, measure_speed, nonzero_params, \
        size_on_disk
    from autoprune.models import get_adapter
    from autoprune.surgery import encoder_weight_sparsity, make_unstructured_permanent, prune_structured, \
        prune_unstructured, record_shape
    from autoprune.train import finetune, set_seed

    phases = {"load": 0.0, "prune": 0.0, "retrain": 0.0, "evaluate": 0.0, "measure": 0.0}
    t0 = time.perf_counter()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    ctx = _context(config, progress=progress)
    policy.check_layers(ctx.num_layers)
    task = ctx.task
    set_seed(policy.seed)
    from autoprune.runtimes import trial_device

    device = trial_device()  # cuda when Ray gave this trial a GPU (gpus_per_trial > 0), else cpu
    model = copy.deepcopy(ctx.dense).to(device)
    adapter = get_adapter(model)
    orig_heads, orig_ffn = adapter.shape(model)
    kept_heads = [list(range(h)) for h in orig_heads]
    kept_neurons = [list(range(f)) for f in orig_ffn]
    teacher = ctx.dense if policy.distillation is not None and policy.distillation.weight > 0 else None
    if teacher is not None and device.type != "cpu":
        teacher = copy.deepcopy(teacher).to(device)
    phases["load"] = time.perf_counter() - t0

    history: list[list[float]] = []
    done_steps = 0
    budget = policy.retrain
    k_steps = 1 if (policy.kept_heads or policy.kept_neurons) else policy.iterative_steps
    per_step = [budget.steps // k_steps + (1 if i < budget.steps % k_steps else 0) for i in range(k_steps)]
    batches = train_batches(task.train, budget.batch_size, seed=policy.seed, pad_id=task.pad_token_id)

    def calib() -> Any:
        it = train_batches(task.train, budget.batch_size, seed=policy.seed + 7, pad_id=task.pad_token_id)
        return (next(it) for _ in range(config.calibration_batches))

    def val_metrics() -> EvalMetrics:
        return evaluate_split(model, task.validation, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                              num_labels=task.num_labels)

    needs_grad = get_criterion(policy.criterion).needs_gradients
    for k in range(1, k_steps + 1):
        tp = time.perf_counter()
        frac = k / k_steps
        if policy.granularity == "structured":
            if policy.kept_heads or policy.kept_neurons:
                kept_heads = [list(x) for x in (policy.kept_heads or kept_heads)]
                kept_neurons = [list(x) for x in (policy.kept_neurons or kept_neurons)]
                prune_structured(model, kept_heads, kept_neurons)
            else:
                _structured_step(model, policy, frac, orig_heads, orig_ffn, kept_heads, kept_neurons,
                                 seed=policy.seed * 1000 + k, calib=calib() if needs_grad else None)
        else:
            prune_unstructured(model, unstructured_masks(model, policy, frac, seed=policy.seed * 1000 + k,
                                                         calib=calib() if needs_grad else None))
        model.zero_grad(set_to_none=True)
        phases["prune"] += time.perf_counter() - tp

        tr = time.perf_counter()
        eval_before = phases["evaluate"]
        steps = per_step[k - 1]
        offset = done_steps

        def hook(step: int, offset: int = offset) -> bool:
            te = time.perf_counter()
            acc = val_metrics().accuracy
            history.append([offset + step, acc])
            phases["evaluate"] += time.perf_counter() - te
            if on_eval is not None and on_eval(offset + step, acc):
                raise TrialStopped(f"validation accuracy {acc:.4f} at step {offset + step} cannot reach the floor",
                                   history)
            return False

        hooks = {max(1, steps // 2): hook} if (on_eval is not None and steps >= 2) else None
        # qat (valid only with quantize): the retraining sees int8 rounding in every Linear (the
        # mid-phase check scores it so too)
        with fake_quantized(model) if policy.qat else contextlib.nullcontext():
            finetune(model, batches, steps=steps, learning_rate=budget.learning_rate, warmup_ratio=budget.warmup_ratio,
                     seed=policy.seed + k, teacher=teacher,
                     distill_weight=policy.distillation.weight if policy.distillation else 0.0,
                     temperature=policy.distillation.temperature if policy.distillation else 2.0,
                     hooks=hooks, desc=f"retrain {k}/{k_steps}", progress=progress)
        done_steps += steps
        phases["retrain"] += time.perf_counter() - tr - (phases["evaluate"] - eval_before)

    model = model.cpu()  # int8, timing and saving run on CPU copies (a cuda target moves its own)
    if policy.granularity == "unstructured":
        make_unstructured_permanent(model)
    record_shape(model)

    # quantize before the final evaluation: an int8 policy's accuracy is the int8 model's accuracy
    tq = time.perf_counter()
    float_model = model
    if policy.quantize:
        model = quantize_dynamic_int8(float_model)
    phases["prune"] += time.perf_counter() - tq

    te = time.perf_counter()
    if final_split == "test":
        if task.test is None:
            from autoprune.errors import DataError

            raise DataError("final_split='test' but the data config has no test split")
        final = evaluate_split(model, task.test, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                               num_labels=task.num_labels)
    elif final_split == "validation":
        final = val_metrics()
    else:
        raise ValueError(f"final_split must be 'validation' or 'test', got {final_split!r}")
    dense_final = ctx.dense_on(final_split, config.eval_batch_size)
    history.append([done_steps, final.accuracy])
    phases["evaluate"] += time.perf_counter() - te

    tm = time.perf_counter()
    m = config.measure
    targets = None
    if m.targets is not None or m.resource:  # measurement targets: the objective's speedup is the trial's
        from autoprune.runtimes import measure_targets, speed_report

        targets = measure_targets(ctx.dense, float_model, m, int8=policy.quantize)
        speed = speed_report(targets["targets"][targets["objective"]])
    else:
        speed = measure_speed(ctx.dense, model, batch_size=m.batch_size, seq_len=m.seq_len, threads=m.threads,
                              warmup=m.warmup, repeats=m.repeats, batch1=m.batch1)
    flops = count_flops(float_model, m.seq_len, m.batch_size)
    dense_flops = count_flops(ctx.dense, m.seq_len, m.batch_size)
    heads, ffn = adapter.shape(float_model)
    unstructured = policy.granularity == "unstructured"
    params = nonzero_params(float_model) if unstructured else count_params(float_model)
    result = TrialResult(
        policy=policy.model_copy(update={"kept_heads": kept_heads if not unstructured else None,
                                         "kept_neurons": kept_neurons if not unstructured else None}).to_dict(),
        accuracy=final.accuracy, macro_f1=final.macro_f1, per_class_recall=final.per_class_recall,
        dense_accuracy=dense_final.accuracy, dense_macro_f1=dense_final.macro_f1,
        accuracy_drop=dense_final.accuracy - final.accuracy,
        eval_split=config.data.validation_split if final_split == "validation" else str(config.data.test_split),
        eval_n=final.n, speedup=speed.speedup, latency_ms=speed.pruned_ms, dense_latency_ms=speed.dense_ms,
        speedup_b1=speed.speedup_b1, latency_b1_ms=speed.pruned_ms_b1, dense_latency_b1_ms=speed.dense_ms_b1,
        speed_label=_speed_label(unstructured, policy.quantize),
        flops=flops, dense_flops=dense_flops, flops_reduction=dense_flops / max(flops, 1),
        params=params, dense_params=count_params(ctx.dense), size_bytes=size_on_disk(model),
        dense_size_bytes=size_on_disk(ctx.dense), heads_per_layer=heads, ffn_per_layer=ffn,
        kept_heads=None if unstructured else kept_heads, kept_neurons=None if unstructured else kept_neurons,
        weight_sparsity=encoder_weight_sparsity(float_model), retrain_steps=done_steps, phase_seconds=phases,
        history=history, measure=config.measure.model_dump(), targets=targets,
    )
    phases["measure"] = time.perf_counter() - tm
    if save_dir:
        save_trial_model(float_model, ctx.tokenizer, save_dir, quantized=policy.quantize)
        result.model_dir = str(save_dir)
    phases["total"] = time.perf_counter() - t0
    logger.info("trial %s: accuracy %.4f (dense %.4f), speedup %.2fx", policy.summary(), result.accuracy,
                result.dense_accuracy, result.speedup)
    return result


def save_trial_model(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, quantized: bool = False) -> Path:
    """Save a pruned float model with its tokenizer; ``quantized`` marks it for int8 re-quantization on load."""
    from autoprune.surgery import record_shape

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = record_shape(model)
    meta["quantized"] = bool(quantized)
    model.config.autoprune = meta
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
