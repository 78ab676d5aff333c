"""Fine-tuning (with optional distillation) and the cached dense baseline.

:func:`finetune` is the one training loop: AdamW, linear warmup/decay, gradient clipping, a fixed
seed, length-bucketed batches and a tqdm progress bar. :func:`ensure_baseline` fine-tunes the
unpruned model once per (model, data, training settings) and caches it under
``<run_dir>/baselines/<key>/``; every pruned trial starts from that copy. A model brought already
fine-tuned (``model.finetuned: true``) is cached as it is, after its classifier is checked against
the data (:func:`match_classifier`). :func:`check_config` runs every check that needs no training:
lengths against the model's position limit, tokens against its embedding, labels, split overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import tempfile
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
    from autoprune.devices import autocast

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


def position_limit(hf_config: Any) -> int | None:
    """The longest input (in tokens) a model's position embeddings cover; None when it has none.

    RoBERTa numbers positions from ``pad_token_id + 1``, so 514 embeddings hold 512 tokens.

    Example:
        >>> from transformers import BertConfig, RobertaConfig
        >>> bert, roberta = BertConfig(max_position_embeddings=512), RobertaConfig(max_position_embeddings=514)
        >>> position_limit(bert), position_limit(roberta)
        (512, 512)
    """
    n = getattr(hf_config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= int(getattr(hf_config, "pad_token_id", None) or 0) + 1
    return int(n)


def check_model_fits(config: RunConfig) -> None:
    """Refuse lengths above the model's position limit (``data.max_length``, ``measure.seq_len``) before
    any training: a longer row would crash training or measurement midway. An error, not a clamp: the
    configured length is part of the baseline's cache key and of every recorded measurement."""
    from autoprune.errors import ConfigError
    from autoprune.models import _hf_config

    path = config.model.resolve()
    hf = _hf_config(path)
    limit = position_limit(hf)
    if limit is None:
        return
    for field, value in (("data.max_length", config.data.max_length), ("measure.seq_len", config.measure.seq_len)):
        if value > limit:
            raise ConfigError(f"{field} is {value}, above the model's limit of {limit} tokens (max_position_embeddings "
                              f"{hf.max_position_embeddings} in the config.json of {path}); set {field} to {limit} "
                              f"or less")


def classifier_labels(hf_config: Any) -> tuple[int, list[str] | None]:
    """``(number of labels, their names)`` of a checkpoint's classifier; names are None when
    ``id2label`` is transformers' default ``LABEL_0``, ``LABEL_1``, ...

    Example:
        >>> from transformers import BertConfig
        >>> classifier_labels(BertConfig(num_labels=3))
        (3, None)
        >>> classifier_labels(BertConfig(id2label={0: "neg", 1: "pos"}))
        (2, ['neg', 'pos'])
    """
    id2label = {int(k): str(v) for k, v in (getattr(hf_config, "id2label", None) or {}).items()}
    n = len(id2label) or int(getattr(hf_config, "num_labels", 2))
    names = [id2label.get(i, f"LABEL_{i}") for i in range(n)]
    return n, None if names == [f"LABEL_{i}" for i in range(n)] else names


def match_classifier(task: Any, hf_config: Any, where: str) -> Any:
    """Check a fine-tuned checkpoint's classifier against the data and return the data with the
    checkpoint's label order: the number of labels must agree and, where both the checkpoint
    (``id2label``) and the data (string labels) name them, the names. Integer labels keep their ids;
    the checkpoint's names, if any, are kept for them. One :class:`DataError` names both sides."""
    import dataclasses

    from autoprune.errors import DataError

    n, names = classifier_labels(hf_config)
    shown = f" {names}" if names else ""
    fix = "give data whose labels match the model's, or drop model.finetuned to fine-tune a new classifier"
    if n != task.num_labels:
        raise DataError(f"the classifier of the fine-tuned model {where} has {n} labels{shown} but the data has "
                        f"{task.num_labels} {task.label_names}; {fix}")
    if names is None or names == task.label_names:
        return task
    if not task.names_from_data:  # integer labels: ids are the data's, names the checkpoint's
        return dataclasses.replace(task, label_names=names)
    if set(names) != set(task.label_names):
        raise DataError(f"the classifier of the fine-tuned model {where} has labels {names} (id2label in its "
                        f"config.json) but the data's labels are {task.label_names}; {fix}")
    return task.with_label_order(names)


def load_task_data(config: RunConfig, tokenizer: Any | None = None) -> Any:
    """Tokenised splits of the configured task (cached per process), checked against the model: every
    token id within its embedding, and for a fine-tuned model (``model.finetuned``) the labels of its
    classifier (:func:`match_classifier`; the data then follows the checkpoint's label order)."""
    from autoprune.data import load_task
    from autoprune.errors import ModelError
    from autoprune.models import _hf_config

    tok = tokenizer if tokenizer is not None else load_tokenizer(config)
    task = load_task(config.data, tok, cache_dir=str(Path(config.run_dir) / "cache" / "datasets"))
    path = config.model.resolve()
    hf = _hf_config(path)
    vocab = getattr(hf, "vocab_size", None)
    top = max((max(ids) for s in (task.train, task.validation, task.test) if s is not None
               for ids in s.input_ids if ids), default=0)
    if vocab is not None and top >= vocab:
        raise ModelError(f"the tokenizer of {path} gives token id {top}, but the model's embedding has {vocab} rows "
                         f"(vocab_size in config.json): tokenizer and model do not belong together; keep the "
                         f"model's own tokenizer files beside its config.json")
    if config.model.finetuned:
        task = match_classifier(task, hf, path)
    return task


def check_config(config: RunConfig) -> None:
    """Every check that can run before any training (and before a search creates its study): the data
    files, the lengths against the model's position limit, the tokenised data against the tokenizer
    and, for a fine-tuned model, its classifier, and the overlap of the validation and test rows with
    the training rows. The tokenised data stays cached for the training that follows."""
    from autoprune.data import check_files

    check_files(config.data)
    check_model_fits(config)
    load_task_data(config)


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (``cpu.max``).

    Example:
        >>> 1 <= available_cpus() <= (os.cpu_count() or 1)
        True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return max(1, n)


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


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


def _check_writable(config: RunConfig, folder: Path) -> None:
    from autoprune.errors import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"run_dir '{config.run_dir}': cannot write {folder} ({exc.strerror or exc}); set run_dir "
                          f"in the run config to a folder you can write") from None


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


def _finetuned_pooling(config: RunConfig, hf_config: Any) -> str:
    """The head of a fine-tuned checkpoint: the pooling its ``config.json`` records must be the configured one."""
    from autoprune.errors import ConfigError
    from autoprune.models._pooling import POOLING_ATTR

    recorded = getattr(hf_config, POOLING_ATTR, None)
    if recorded is not None and recorded != config.model.pooling:
        raise ConfigError(f"model.pooling is '{config.model.pooling}' but the fine-tuned model "
                          f"{config.model.resolve()} was trained with '{recorded}' pooling ({POOLING_ATTR} in its "
                          f"config.json); set model.pooling: {recorded}")
    return config.model.pooling


def ensure_baseline(config: RunConfig, *, progress: bool = True) -> Path:
    """Fine-tune the dense model once and cache it; return its directory.

    The directory holds the model (``save_pretrained``, with the data's label names in
    ``id2label``/``label2id``), the tokenizer and ``metrics.json`` (validation and test accuracy,
    the settings, wall time). ``metrics.json`` is written last, so a directory without it is an
    interrupted run and is trained again. A file lock keeps concurrent processes from training the
    same baseline twice. A model given as already fine-tuned (``model.finetuned``) is evaluated and
    cached as it is, never trained. Lengths, data and labels are checked against the model before
    anything trains; training runs ``torch_threads`` intra-op threads (default: :func:`available_cpus`).
    """
    from autoprune.data import train_batches
    from autoprune.measure import evaluate_split
    from autoprune.models import _hf_config, load_model

    check_model_fits(config)
    out = baseline_dir(config)
    if (out / "metrics.json").is_file():
        return out
    _check_writable(config, out.parent)
    with _file_lock(out.with_suffix(".lock")):
        if (out / "metrics.json").is_file():
            return out
        threads = config.torch_threads or available_cpus()
        with intra_op_threads(threads):
            t0 = time.perf_counter()
            tok = load_tokenizer(config)
            task = load_task_data(config, tok)
            b = config.baseline
            losses: list[float] = []
            ckpt = out.parent / f"{out.name}.ckpt"
            if config.model.finetuned:
                path = config.model.resolve()
                model = load_model(path, pooling=_finetuned_pooling(config, _hf_config(path)))
                logger.info("dense baseline: the fine-tuned model %s as it is (no training) -> %s", path, out)
            else:
                named = classifier_labels(_hf_config(config.model.resolve()))[1]
                if named:
                    logger.warning("model %s already classifies %s: it is fine-tuned again; set model.finetuned: "
                                   "true to use it as it is", config.model.name_or_path, named)
                set_seed(b.seed)
                model = load_model(config.model.resolve(), num_labels=task.num_labels, pooling=config.model.pooling)
                logger.info("training the dense baseline (%d steps, batch %d, %d threads) -> %s", b.steps,
                            b.batch_size, threads, out)
                losses = finetune(model, train_batches(task.train, b.batch_size, seed=b.seed, pad_id=task.pad_token_id,
                                                       padding=b.padding, max_length=config.data.max_length),
                                  steps=b.steps, learning_rate=b.learning_rate, warmup_ratio=b.warmup_ratio,
                                  weight_decay=b.weight_decay, max_grad_norm=b.max_grad_norm, seed=b.seed,
                                  desc="dense baseline", progress=progress, checkpoint=ckpt)
            model.config.id2label = dict(enumerate(task.label_names))
            model.config.label2id = {n: i for i, n in enumerate(task.label_names)}
            train_s = time.perf_counter() - t0
            val = evaluate_split(model, task.validation, batch_size=config.eval_batch_size, pad_id=task.pad_token_id,
                                 num_labels=task.num_labels)
            metrics: dict[str, Any] = {
                "validation_accuracy": val.accuracy, "validation_macro_f1": val.macro_f1,
                "validation_recall": val.per_class_recall, "validation_n": val.n,
                "validation_rows": config.data.validation_rows(),
                "steps": 0 if config.model.finetuned else b.steps,
                "final_loss": float(np.mean(losses[-20:])) if losses else None,
                "train_seconds": train_s, "label_names": task.label_names,
                "model": config.model.name_or_path, "pooling": config.model.pooling, "key": config.baseline_key(),
                "finetuned": config.model.finetuned,
                "settings": None if config.model.finetuned else b.model_dump(), "torch_threads": threads,
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
