"""One trial: prune the dense baseline by one policy, retrain, quantize, evaluate, measure.

``run_trial(config, policy) -> TrialResult`` is the one function a Ray worker runs. It takes and
returns plain data; nothing here knows about Optuna.

A trial is a short composition of named steps, each timed in ``phase_seconds``:

* ``load``: the dense baseline, its tokenised data and the calibration batches (all cached per
  process, so a worker that scores many policies without retraining loads them once);
* ``prune`` (and ``reconstruct``): :func:`autoprune.pruner.prune`, once per step of the
  iterative schedule, each step followed by ``retrain`` (skipped when ``retrain.steps`` is 0;
  with ``retrain.keep_best`` the last phase is undone when it lowered validation accuracy);
* ``quantize``: ONNX Runtime dynamic int8 for ``quantize: true`` policies (scored in ONNX Runtime,
  timed in the run's ``onnxruntime`` targets); a float policy is scored in ONNX Runtime too when the
  speed objective is timed there on CPU (the export is then part of ``measure``);
* ``evaluate``: the accuracy right after the first cut (``accuracy_pruned``) and the final one,
  on ``final_split``, plus the mid-retraining checks of the early-stop rule;
* ``measure``: interleaved latency against the dense model (or, with ``measure.latency_table``, the
  speedup predicted from a per-layer latency table), FLOPs, parameters, size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from autoprune.config import RunConfig
from autoprune.policy import PruningPolicy
from autoprune.pruner import PruneRecord
from autoprune.onnx_export import OnnxClassifier, onnx_int8_model, onnx_model
from autoprune.quantize import fake_quantized
from autoprune.results import EvalMetrics, TrialResult

logger = logging.getLogger(__name__)

OnEval = Callable[[int, float], bool]
SPLITS = ("validation", "test")


class TrialStopped(Exception):
    """Raised when ``on_eval`` asks to stop a trial early (it cannot reach the accuracy floor)."""

    def __init__(self, reason: str, history: list[list[float]]):
        super().__init__(reason)
        self.reason = reason
        self.history = history


#: seed of the calibration batches: a fixed sample of the training split, the same for every policy
#: of a run (so the batches, and what is computed from them on the dense model, are computed once)
CALIBRATION_SEED = 7


@dataclass
class _Context:
    """Per-process cache: the dense baseline, its tokenised data, its metrics on the eval split and the
    calibration batches (by batch size and count)."""

    baseline_dir: Path
    tokenizer: Any
    task: Any
    dense: nn.Module
    dense_eval: EvalMetrics
    num_layers: int
    dense_test: EvalMetrics | None = None
    calibration: dict[tuple[int, int], list[dict[str, torch.Tensor]]] = field(default_factory=dict)
    targets: dict[tuple[int, int], Any] = field(default_factory=dict)
    scores: dict[tuple[str, str, int, int], Any] = field(default_factory=dict)

    def calibration_batches(self, batch_size: int, n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` training batches of ``batch_size`` from :data:`CALIBRATION_SEED`, drawn once per process."""
        from autoprune.data import train_batches

        key = (batch_size, n)
        if key not in self.calibration:
            it = train_batches(self.task.train, batch_size, seed=CALIBRATION_SEED, pad_id=self.task.pad_token_id)
            self.calibration[key] = [next(it) for _ in range(n)]
        return self.calibration[key]

    def dense_targets(self, batch_size: int, n: int) -> Any:
        """The dense model's layer targets on :meth:`calibration_batches` (a
        :class:`~autoprune.reconstruct.DenseTargets`), computed once per process: every policy's
        least-squares reconstruction fits to the same dense sums."""
        from autoprune.reconstruct import DenseTargets

        key = (batch_size, n)
        if key not in self.targets:
            self.targets[key] = DenseTargets.compute(self.dense, self.calibration_batches(batch_size, n))
            logger.info("dense reconstruction targets on %d calibration batches: %.1f s", n,
                        self.targets[key].seconds)
        return self.targets[key]

    def dense_scores(self, model: nn.Module, criterion: str, granularity: str, batch_size: int, n: int) -> Any:
        """A gradient criterion's scores of the dense model (``model``: an unpruned copy of it) on
        :meth:`calibration_batches`, computed once per process: they are deterministic (no dropout), so
        every policy's first cut with that criterion scores the same. Seconds spent: 0 after the first."""
        from autoprune.criteria import get_criterion

        key = (criterion, granularity, batch_size, n)
        if key not in self.scores:
            crit = get_criterion(criterion)
            batches = self.calibration_batches(batch_size, n)
            self.scores[key] = (crit.unit_scores(model, batches) if granularity == "structured"
                                else crit.model_weight_scores(model, batches))
        return self.scores[key]

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

    key = config.model_dump_json(exclude={"measure"})  # how speed is timed shapes no part of the context
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


@dataclass
class _Run:
    """One trial's state as it goes through its steps."""

    config: RunConfig
    policy: PruningPolicy
    ctx: _Context
    model: nn.Module
    on_eval: OnEval | None
    progress: bool
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("load", "prune", "reconstruct", "retrain", "quantize", "evaluate", "measure"), 0.0))
    history: list[list[float]] = field(default_factory=list)
    record: PruneRecord | None = None
    done_steps: int = 0
    retrain_undone: bool | None = None  # keep_best only: whether the last retraining phase was undone

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] += time.perf_counter() - t

    def evaluate(self, split: str, model: nn.Module | None = None) -> EvalMetrics:
        from autoprune.measure import evaluate_split

        task = self.ctx.task
        with self.timed("evaluate"):
            return evaluate_split(self.model if model is None else model,
                                  task.test if split == "test" else task.validation,
                                  batch_size=self.config.eval_batch_size, pad_id=task.pad_token_id,
                                  num_labels=task.num_labels)


def _calibration_key(run: _Run) -> tuple[int, int]:
    """Batch size and count of the calibration batches: ``retrain.batch_size``, the policy's count or the run's."""
    pol = run.policy
    return pol.retrain.batch_size, (pol.calibration.batches if pol.calibration else None) or run.config.calibration_batches


def _prune_step(run: _Run, k: int, k_steps: int, replay: PruneRecord | None) -> None:
    """Score, plan and cut to ``k / k_steps`` of the policy's target (or replay a record); reconstruct."""
    from autoprune.criteria import get_criterion
    from autoprune.pruner import prune

    pol = run.policy
    scores_need = replay is None and get_criterion(pol.criterion).needs_gradients
    t = time.perf_counter()
    key = _calibration_key(run)
    # the dense targets of the reconstruction do not depend on the policy: on CPU they are computed once
    # per process (every rung-0 policy of a worker reuses them); on a GPU the fit runs against the dense
    # model, on the calibration batches
    reconstruct_on_cpu = pol.reconstruct != "none" and next(run.model.parameters()).device.type == "cpu"
    dense: Any = run.ctx.dense_targets(*key) if reconstruct_on_cpu else run.ctx.dense
    # a gradient criterion's scores of the dense model are the same for every policy: the first cut
    # takes them from the per-process cache
    scores = run.ctx.dense_scores(run.model, pol.criterion, pol.granularity, *key) if scores_need and k == 1 else None
    needs_batches = (scores_need and scores is None) or (pol.reconstruct != "none" and not reconstruct_on_cpu)
    calib = run.ctx.calibration_batches(*key) if needs_batches else None
    before = run.record.timings["reconstruction"] if run.record is not None else 0.0
    run.record = prune(run.model, pol, calib, dense=dense, fraction=k / k_steps, previous=run.record,
                       replay=replay, scores=scores)
    reconstruct = run.record.timings["reconstruction"] - before
    run.phases["reconstruct"] += reconstruct
    run.phases["prune"] += time.perf_counter() - t - reconstruct


def _retrain_step(run: _Run, k: int, k_steps: int, steps: int, batches: Iterator[dict[str, torch.Tensor]],
                  teacher: nn.Module | None) -> None:
    """Fine-tune for ``steps`` (none when 0); the early-stop check runs at the middle of the phase."""
    from autoprune.train import finetune

    if steps <= 0:
        return
    pol, budget = run.policy, run.policy.retrain
    offset = run.done_steps
    eval_before = run.phases["evaluate"]

    def hook(step: int) -> bool:
        acc = run.evaluate("validation").accuracy
        run.history.append([offset + step, acc])
        if run.on_eval is not None and run.on_eval(offset + step, acc):
            raise TrialStopped(f"validation accuracy {acc:.4f} at step {offset + step} cannot reach the floor",
                               run.history)
        return False

    hooks = {max(1, steps // 2): hook} if (run.on_eval is not None and steps >= 2) else None
    with run.timed("retrain"):
        # qat (valid only with quantize): the retraining sees int8 rounding in every Linear (the
        # mid-phase check scores it so too)
        with fake_quantized(run.model) if pol.qat else contextlib.nullcontext():
            finetune(run.model, batches, steps=steps, learning_rate=budget.learning_rate,
                     warmup_ratio=budget.warmup_ratio, seed=pol.seed + k, teacher=teacher,
                     distill_weight=pol.distillation.weight if pol.distillation else 0.0,
                     temperature=pol.distillation.temperature if pol.distillation else 2.0,
                     hooks=hooks, desc=f"retrain {k}/{k_steps}", progress=run.progress)
    run.phases["retrain"] -= run.phases["evaluate"] - eval_before
    run.done_steps += steps


def _retrain_keeping_best(run: _Run, k: int, k_steps: int, steps: int, batches: Iterator[dict[str, torch.Tensor]],
                          teacher: nn.Module | None, before: EvalMetrics | None) -> None:
    """The last retraining phase under ``retrain.keep_best``: score the model on validation before and
    after it (as the retraining sees it: with int8 rounding simulated for ``qat``) and keep the better
    one; a tie keeps the retrained model. ``before`` is a validation score of the model as it is, when
    one was taken; ``run.retrain_undone`` says which model was kept."""

    def score() -> EvalMetrics:
        with fake_quantized(run.model) if run.policy.qat else contextlib.nullcontext():
            return run.evaluate("validation")

    before = before or score()
    state = {n: t.detach().clone() for n, t in run.model.state_dict().items()}
    _retrain_step(run, k, k_steps, steps, batches, teacher)
    after = score()
    run.retrain_undone = after.accuracy < before.accuracy
    if run.retrain_undone:  # the history keeps the score the undone retraining reached
        run.history.append([run.done_steps, after.accuracy])
        run.model.load_state_dict(state)
        logger.info("trial %s: retraining lowered validation accuracy %.4f -> %.4f; the model before it is kept",
                    run.policy.summary(), before.accuracy, after.accuracy)


def _scored_in_onnx(config: RunConfig) -> bool:
    """Whether a float policy is scored in ONNX Runtime: when the speed objective is timed there, on CPU."""
    m = config.measure
    if m.targets is None:
        return False
    t = m.objective_target()
    return t.runtime == "onnxruntime" and t.device == "cpu"


def _scored_model(run: _Run) -> nn.Module:
    """The model the policy is scored as, run with the trial's threads: ONNX Runtime dynamic int8 for
    ``quantize: true`` policies (exported from the float model); the float model exported to ONNX
    Runtime when the speed objective is timed there on CPU (the file that is then timed; its logits
    are checked against PyTorch's at export; on one thread ONNX Runtime scored the 1,496 SST-2 validation
    rows of the dense MiniLM-L6 in 13.2-13.6 s against eager PyTorch's 20.3-23.9 s, 2026-12-07, both
    beside two other processes on 2 cores); else the float model itself."""
    if run.policy.quantize:
        with run.timed("quantize"):
            return onnx_int8_model(run.model, threads=torch.get_num_threads())
    if _scored_in_onnx(run.config):
        with run.timed("measure"):  # the export the timing needs, made before scoring
            return onnx_model(run.model, threads=torch.get_num_threads())
    return run.model


def _speed_label(unstructured: bool, quantized: bool, predicted: bool = False) -> str:
    """How to read a trial's speedup: zeroed weights make no dense kernel faster, int8 kernels do; a
    rung below the top may predict it from a latency table instead of timing it."""
    how = "predicted" if predicted else "measured"
    if not unstructured:
        return how
    return f"int8 {how}; zeros size-only" if quantized else "size-only"


def _predicted_speed(run: _Run, model: nn.Module) -> Any:
    """The objective target's speedup predicted from its latency table (:mod:`autoprune.latency`,
    built on first use and cached under ``<run_dir>/cache/latency``) by the model's shape."""
    from autoprune.latency import latency_table
    from autoprune.models import get_adapter
    from autoprune.results import SpeedReport

    t = run.config.measure.objective_target()
    table = latency_table(run.ctx.dense, t, int8=run.policy.quantize,
                          cache_dir=Path(run.config.run_dir) / "cache" / "latency", progress=run.progress)
    speedup = table.predict(*get_adapter(model).shape(model))
    return SpeedReport(batch_size=t.batch_size, seq_len=t.seq_len, threads=t.threads, repeats=0,
                       dense_ms=table.dense_ms, pruned_ms=table.dense_ms / speedup, speedup=speedup, rounds=0)


def run_trial(config: RunConfig, policy: PruningPolicy, *, on_eval: OnEval | None = None,
              save_dir: str | None = None, progress: bool = False, final_split: str = "validation",
              record: PruneRecord | None = None) -> TrialResult:
    """Prune the dense baseline by ``policy``, retrain, evaluate, measure.

    ``on_eval(step, accuracy)`` is called at the middle of every retraining phase; returning True
    stops the trial with :class:`TrialStopped`. ``final_split`` (``validation`` or ``test``) is the
    split of the reported accuracies (right after pruning and final), for the pruned and the dense
    model alike; the search always selects on ``validation``, benchmarks re-measure the chosen
    policies on ``test``. ``record`` re-applies that :class:`~autoprune.pruner.PruneRecord`'s exact
    cut (one step) instead of scoring. ``save_dir`` saves the pruned, fine-tuned model with its
    tokenizer and record (:func:`autoprune.serialization.save_pruned`).

    Example (tiny model from tests/conftest.py; see tests/test_trial.py):
        >>> # res = run_trial(config, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=10))
        >>> # res.accuracy_pruned, res.accuracy, res.speedup
    """
    from autoprune.data import train_batches
    from autoprune.errors import DataError, PolicyError
    from autoprune.train import set_seed

    if final_split not in SPLITS:
        raise ValueError(f"final_split must be 'validation' or 'test', got {final_split!r}")
    if record is not None and record.granularity != "structured":
        raise PolicyError("an unstructured prune record holds no masks to re-apply; run the policy without a record")
    if policy.quantize:  # before the baseline is loaded: a config that cannot time int8 fails at once
        from autoprune.runtimes import check_int8

        check_int8(config.measure, "run config 'measure'")
    t0 = time.perf_counter()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    ctx = _context(config, progress=progress)
    if final_split == "test" and ctx.task.test is None:
        raise DataError("final_split='test' but the data config has no test split")
    policy.check_layers(ctx.num_layers)
    set_seed(policy.seed)
    from autoprune.devices import trial_device

    device = trial_device()  # cuda when Ray gave this trial a GPU (gpus_per_trial > 0), else cpu
    run = _Run(config, policy, ctx, copy.deepcopy(ctx.dense).to(device), on_eval, progress)
    run.phases["load"] = time.perf_counter() - t0

    budget = policy.retrain
    k_steps = 1 if record is not None else policy.iterative_steps
    per_step = [budget.steps // k_steps + (1 if i < budget.steps % k_steps else 0) for i in range(k_steps)]
    batches = train_batches(ctx.task.train, budget.batch_size, seed=policy.seed, pad_id=ctx.task.pad_token_id)
    teacher = ctx.dense if policy.distillation is not None and policy.distillation.weight > 0 else None
    if teacher is not None and device.type != "cpu":
        teacher = copy.deepcopy(teacher).to(device)
    pruned: EvalMetrics | None = None
    # a cut with no retraining after it is the final model: a policy scored in ONNX Runtime (int8, or
    # float where the objective is timed there) is then scored once, as it is timed, not also in PyTorch
    score_cut = not ((policy.quantize or _scored_in_onnx(config)) and budget.steps == 0 and k_steps == 1)
    for k in range(1, k_steps + 1):
        _prune_step(run, k, k_steps, record)
        if k == 1 and score_cut:
            pruned = run.evaluate(final_split)  # before any retraining
        if k == k_steps and budget.keep_best and per_step[k - 1] > 0:
            reuse = pruned if k_steps == 1 and final_split == "validation" and not policy.qat else None
            _retrain_keeping_best(run, k, k_steps, per_step[k - 1], batches, teacher, reuse)
        else:
            _retrain_step(run, k, k_steps, per_step[k - 1], batches, teacher)
    assert run.record is not None

    run.model = run.model.cpu()  # int8, timing and saving run on CPU copies (a cuda target moves its own)
    if policy.granularity == "unstructured":
        from autoprune.surgery import make_unstructured_permanent

        make_unstructured_permanent(run.model)
    # quantize before the final evaluation: an int8 policy's accuracy is the int8 model's accuracy
    model = _scored_model(run)
    nothing_since = run.done_steps == 0 and k_steps == 1 and model is run.model
    final = pruned if nothing_since and pruned is not None else run.evaluate(final_split, model)
    pruned = final if pruned is None else pruned
    run.history.append([run.done_steps, final.accuracy])
    with run.timed("evaluate"):
        dense_final = ctx.dense_on(final_split, config.eval_batch_size)
    with run.timed("measure"):
        result = _measure(run, model, final, dense_final, pruned, final_split)
    if save_dir:
        from autoprune.serialization import save_pruned

        save_pruned(run.model, save_dir, ctx.tokenizer, run.record, quantized=policy.quantize)
        result.model_dir = str(save_dir)
    run.phases["total"] = time.perf_counter() - t0
    logger.info("trial %s: accuracy %.4f (%.4f after pruning, dense %.4f), speedup %.2fx", policy.summary(),
                result.accuracy, result.accuracy_pruned, result.dense_accuracy, result.speedup)
    return result


def _measure(run: _Run, model: nn.Module, final: EvalMetrics, dense_final: EvalMetrics, pruned: EvalMetrics,
             final_split: str) -> TrialResult:
    """Latency against the dense model (in every measurement target), FLOPs, parameters and size; the whole result."""
    from autoprune.measure import count_flops, count_params, measure_speed, nonzero_params, size_on_disk, speed_flags
    from autoprune.models import get_adapter
    from autoprune.runtimes import machine
    from autoprune.surgery import encoder_weight_sparsity

    ctx, policy, float_model, rec = run.ctx, run.policy, run.model, run.record
    assert rec is not None
    m = run.config.measure
    targets = None
    if m.latency_table:  # a rung below the top: predicted, not timed
        speed = _predicted_speed(run, float_model)
    elif m.targets is not None or m.resource:  # measurement targets: the objective's speedup is the trial's
        from autoprune.runtimes import measure_targets, speed_report

        # the ONNX Runtime file a policy was scored with is timed as it is, not re-made
        onnx_file = model.path if isinstance(model, OnnxClassifier) else None
        targets = measure_targets(ctx.dense, float_model, m, int8=policy.quantize, onnx_file=onnx_file)
        speed = speed_report(targets["targets"][targets["objective"]])
    else:
        speed = measure_speed(ctx.dense, model, batch_size=m.batch_size, seq_len=m.seq_len, threads=m.threads,
                              warmup=m.warmup, repeats=m.repeats, batch1=m.batch1, max_spread=m.max_spread,
                              max_repeats=m.max_repeats)
    flops = count_flops(float_model, m.seq_len, m.batch_size)
    dense_flops = count_flops(ctx.dense, m.seq_len, m.batch_size)
    flags = speed_flags(speed.speedup, dense_flops / max(flops, 1), quantized=policy.quantize, noisy=speed.noisy)
    if flags:
        logger.warning("trial %s: speedup %.2fx flagged: %s", policy.summary(), speed.speedup, "; ".join(flags))
    heads, ffn = get_adapter(float_model).shape(float_model)
    unstructured = policy.granularity == "unstructured"
    data = run.config.data
    return TrialResult(
        policy=policy.to_dict(),
        accuracy=final.accuracy, macro_f1=final.macro_f1, per_class_recall=final.per_class_recall,
        dense_accuracy=dense_final.accuracy, dense_macro_f1=dense_final.macro_f1,
        accuracy_drop=dense_final.accuracy - final.accuracy,
        eval_split=data.validation_split if final_split == "validation" else str(data.test_split),
        eval_n=final.n, speedup=speed.speedup, latency_ms=speed.pruned_ms, dense_latency_ms=speed.dense_ms,
        speedup_b1=speed.speedup_b1, latency_b1_ms=speed.pruned_ms_b1, dense_latency_b1_ms=speed.dense_ms_b1,
        speed_label=_speed_label(unstructured, policy.quantize, m.latency_table), speed_flags=flags,
        speedup_quartiles=None if speed.speedup_q1 is None else [speed.speedup_q1, speed.speedup_q3],
        flops=flops, dense_flops=dense_flops, flops_reduction=dense_flops / max(flops, 1),
        params=nonzero_params(float_model) if unstructured else count_params(float_model),
        dense_params=count_params(ctx.dense), size_bytes=size_on_disk(model),
        dense_size_bytes=size_on_disk(ctx.dense), heads_per_layer=heads, ffn_per_layer=ffn,
        weight_sparsity=encoder_weight_sparsity(float_model), retrain_steps=run.done_steps,
        phase_seconds=run.phases, history=run.history, measure=run.config.measure.model_dump(),
        accuracy_pruned=pruned.accuracy, prune_record=rec.to_dict(), targets=targets,
        retrain_undone=run.retrain_undone, machine=targets["machine"] if targets else machine(),
    )
