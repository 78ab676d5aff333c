"""Fine-tuning (with optional distillation) and the cached dense baseline.

:func:`finetune` is the one training loop: AdamW, linear warmup/decay, gradient clipping, a fixed
seed, length-bucketed batches and a tqdm progress bar. :func:`ensure_baseline` fine-tunes the
unpruned model once per (model, data, training settings) and caches it under
``<run_dir>/baselines/<key>/``; every pruned trial starts from that copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.config import RunConfig
from autoprune.errors import TrialFailed

logger = logging.getLogger(__name__)

EvalHook = Callable[[int], bool]  # called with the step; returns True to stop training


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """``(1 - weight) * CE(labels) + weight * T^2 * KL(teacher_T || student_T)`` (Hinton et al.)."""
    ce = F.cross_entropy(student_logits, labels)
    if weight == 0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    return (1 - weight) * ce + weight * kd


def _adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused when torch supports it for these tensors (on CPU it cuts the optimiser step ~5x)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def finetune(model: nn.Module, batches: Iterator[dict[str, torch.Tensor]], *, steps: int, learning_rate: float,
             warmup_ratio: float = 0.06, weight_decay: float = 0.01, max_grad_norm: float = 1.0, seed: int = 0,
             teacher: nn.Module | None = None, distill_weight: float = 0.0, temperature: float = 2.0,
             hooks: dict[int, EvalHook] | None = None, desc: str = "fine-tune", progress: bool = True,
             checkpoint: Path | None = None, checkpoint_every: int = 250) -> list[float]:
    """Train ``model`` for ``steps`` optimiser steps; returns the loss of every step.

    ``hooks`` maps a step number to a callback run after that step (e.g. a validation check);
    a callback returning True stops training early. A non-finite loss raises :class:`TrialFailed`.
    With ``checkpoint`` (a file path), the model, optimiser, schedule and step are saved every
    ``checkpoint_every`` steps and an interrupted run resumes from there (the batch stream is
    fast-forwarded, so the resumed run sees the same batches).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    losses: list[float] = []
    if steps <= 0:
        return losses
    set_seed(seed)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [p for p in model.parameters() if p.requires_grad]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = _adamw(groups, learning_rate)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * steps), steps)
    if teacher is not None:
        teacher.eval()
    start = 1
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        losses = list(state["losses"])
        start = int(state["step"]) + 1
        for _ in range(start - 1):  # replay the batch stream up to where the run stopped
            next(batches)
        torch.set_rng_state(state["rng"])
        logger.info("%s: resumed from %s at step %d", desc, checkpoint, start - 1)
    from autoprune.runtimes import autocast

    device = next(model.parameters()).device  # the batches follow the model (a trial on a GPU moves it there)
    model.train()
    bar = tqdm(total=steps, initial=start - 1, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for step in range(start, steps + 1):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with autocast(device):  # bf16 mixed precision on CUDA only
                out = model(**{k: v for k, v in batch.items() if k != "labels"})
                if teacher is not None and distill_weight > 0:
                    with torch.no_grad():
                        t_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
                    loss = distillation_loss(out.logits.float(), t_logits.float(), batch["labels"], distill_weight,
                                             temperature)
                else:
                    loss = F.cross_entropy(out.logits.float(), batch["labels"])
            if not torch.isfinite(loss):
                raise TrialFailed(f"training loss became {loss.item()} at step {step} of {steps} "
                                  f"({desc}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            sched.step()
            losses.append(float(loss.item()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
            if checkpoint is not None and (step % checkpoint_every == 0) and step < steps:
                tmp = Path(checkpoint).with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step, "losses": losses, "rng": torch.get_rng_state()}, tmp)
                os.replace(tmp, checkpoint)
            if hooks and step in hooks and hooks[step](step):
                break
    finally:
        bar.close()
        model.eval()
    return losses


# ----------------------------------------------------------------------------- base model + data
def load_tokenizer(config: RunConfig) -> Any:
    from transformers import AutoTokenizer

    from autoprune.errors import ModelError

    path = config.model.resolve()
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of '{path}': {str(exc).splitlines()[0]}") from None


def load_task_data(config: RunConfig, tokenizer: Any | None = None) -> Any:
    """Tokenised splits of the configured task (cached per process)."""
    from autoprune.data import load_task

    tok = tokenizer if tokenizer is not None else load_tokenizer(config)
    return load_task(config.data, tok, cache_dir=str(Path(config.run_dir) / "cache" / "datasets"))


# ----------------------------------------------------------------------------- dense baseline cache
def baseline_dir(config: RunConfig) -> Path:
    return Path(config.run_dir) / "baselines" / config.baseline_key()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_baseline_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a cached baseline as it was written when the baseline was trained."""
    return json.loads((Path(path) / "metrics.json").read_text())


def baseline_metrics(config: RunConfig, path: str | Path | None = None) -> dict[str, Any]:
    """The cached baseline's metrics, with its validation numbers on the rows ``config`` scores trials on.

    The baseline's cache key leaves out which validation rows are used (they do not change the dense
    model), so a config that narrows or widens the validation subset shares the baseline; its dense
    validation accuracy is then re-evaluated here, so floors and drops compare like with like.
    """
    from autoprune.measure import evaluate_split
    from autoprune.models import load_model

    path = Path(path) if path is not None else baseline_dir(config)
    m = load_baseline_metrics(path)
    rows = config.data.validation_rows()
    if m.get("validation_rows") == rows:
        return m
    tok = load_tokenizer(config)
    task = load_task_data(config, tok)
    model = load_model(str(path))
    val = evaluate_split(model, task.validation, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                         num_labels=task.num_labels)
    logger.info("dense baseline re-evaluated on this config's validation rows %s: accuracy %.4f (n=%d; %.4f "
                "when trained)", rows, val.accuracy, val.n, m.get("validation_accuracy", float("nan")))
    return {**m, "validation_accuracy": val.accuracy, "validation_macro_f1": val.macro_f1,
            "validation_recall": val.per_class_recall, "validation_n": val.n, "validation_rows": rows}


def ensure_baseline(config: RunConfig, *, progress: bool = True) -> Path:
    """Fine-tune the dense model once and cache it; return its directory.

    The directory holds the model (``save_pretrained``), the tokenizer and ``metrics.json``
    (validation and test accuracy, the settings, wall time). ``metrics.json`` is written last,
    so a directory without it is an interrupted run and is trained again. A file lock keeps
    concurrent processes from training the same baseline twice.
    """
    from autoprune.data import train_batches
    from autoprune.measure import evaluate_split
    from autoprune.models import load_model

    out = baseline_dir(config)
    if (out / "metrics.json").is_file():
        return out
    with _file_lock(out.with_suffix(".lock")):
        if (out / "metrics.json").is_file():
            return out
        t0 = time.perf_counter()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        tok = load_tokenizer(config)
        task = load_task_data(config, tok)
        set_seed(config.baseline.seed)
        model = load_model(config.model.resolve(), num_labels=task.num_labels, pooling=config.model.pooling)
        b = config.baseline
        ckpt = out.parent / f"{out.name}.ckpt"
        logger.info("training the dense baseline (%d steps, batch %d) -> %s", b.steps, b.batch_size, out)
        losses = finetune(model, train_batches(task.train, b.batch_size, seed=b.seed, pad_id=task.pad_token_id,
                                               padding=b.padding, max_length=config.data.max_length),
                          steps=b.steps, learning_rate=b.learning_rate, warmup_ratio=b.warmup_ratio,
                          weight_decay=b.weight_decay, max_grad_norm=b.max_grad_norm, seed=b.seed,
                          desc="dense baseline", progress=progress, checkpoint=ckpt)
        train_s = time.perf_counter() - t0
        val = evaluate_split(model, task.validation, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                             num_labels=task.num_labels)
        metrics: dict[str, Any] = {
            "validation_accuracy": val.accuracy, "validation_macro_f1": val.macro_f1,
            "validation_recall": val.per_class_recall, "validation_n": val.n,
            "validation_rows": config.data.validation_rows(),
            "steps": b.steps, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "train_seconds": train_s, "label_names": task.label_names,
            "model": config.model.name_or_path, "pooling": config.model.pooling, "key": config.baseline_key(),
            "settings": config.baseline.model_dump(),
        }
        if task.test is not None:
            test = evaluate_split(model, task.test, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                                  num_labels=task.num_labels)
            metrics.update({"test_accuracy": test.accuracy, "test_macro_f1": test.macro_f1,
                            "test_recall": test.per_class_recall, "test_n": test.n})
        tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if out.exists():
            import shutil

            shutil.rmtree(out)
        os.replace(tmp, out)
        ckpt.unlink(missing_ok=True)
        logger.info("dense baseline: validation accuracy %.4f%s", val.accuracy,
                    f", test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else "")
    return out


def hooks_at(steps: int, fractions: tuple[float, ...], fn: EvalHook) -> dict[int, EvalHook]:
    """Hooks at the given fractions of ``steps`` (at least step 1)."""
    return {max(1, math.ceil(f * steps)): fn for f in fractions}
