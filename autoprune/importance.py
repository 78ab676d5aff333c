"""Importance criteria: small pluggable callables that score weights; higher = more important.

A criterion maps ``(weight, grad, generator) -> elementwise scores`` (same shape as the weight).
Structured scoring sums the elementwise scores over every parameter a unit owns:

* a head ``h`` owns rows ``h*d:(h+1)*d`` (and bias entries) of query, key and value, and the same
  columns of the attention output projection;
* an FFN neuron ``j`` owns row ``j`` (and bias entry) of the intermediate projection and column
  ``j`` of the output projection.

Criteria (``CRITERIA``):

* ``l1``: ``|w|``  (a unit's score is its L1 norm)
* ``l2``: ``w**2`` (a unit's score is its squared L2 norm: the same ranking as the L2 norm)
* ``gradient``: first-order Taylor ``|w * dL/dw|`` with ``dL/dw`` accumulated over calibration batches
  (see :func:`accumulate_gradients`)
* ``random``: uniform noise from a seeded generator, the control every criterion must beat.

Example:
    >>> import torch
    >>> w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    >>> CRITERIA["l1"](w, None, None)
    tensor([[1.0000, 3.0000],
            [0.5000, 0.5000]])
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from autoprune.errors import PolicyError

Criterion = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Generator | None"], torch.Tensor]


def l1(w: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    return w.abs()


def l2(w: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    return w.pow(2)


def taylor(w: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    if grad is None:
        raise PolicyError("the gradient criterion needs gradients: call accumulate_gradients() first")
    return (w * grad).abs()


def random(w: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(w.shape, generator=gen, dtype=torch.float32).to(w.device)


CRITERIA: dict[str, Criterion] = {"l1": l1, "l2": l2, "gradient": taylor, "random": random}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise PolicyError(f"unknown criterion '{name}'; choose one of {', '.join(CRITERIA)}") from None


def accumulate_gradients(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> int:
    """Backpropagate the task loss over ``batches`` and leave the summed gradients in ``.grad``.

    Returns the number of batches used. Dropout is off (eval mode) so the scores are deterministic.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    n = 0
    with torch.enable_grad():
        for batch in batches:
            out = model(**batch)
            out.loss.backward()
            n += 1
    model.train(was_training)
    return n


def _elementwise(lin: nn.Linear, crit: Criterion, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = lin.weight.detach()
    g = lin.weight.grad
    ws = crit(w, g, gen).float()
    bs = None
    if lin.bias is not None:
        bs = crit(lin.bias.detach(), lin.bias.grad, gen).float()
    return ws, bs


def score_structured(model: nn.Module, criterion: str, *, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer scores of every attention head and every FFN neuron: ``(heads, neurons)``."""
    from autoprune.models import get_adapter

    crit = get_criterion(criterion)
    gen = torch.Generator().manual_seed(seed)
    adapter = get_adapter(model)
    d = adapter.head_dim(model)
    head_scores, neuron_scores = [], []
    for parts in adapter.layers(model):
        if criterion == "random":
            head_scores.append(torch.rand(adapter.num_heads(parts), generator=gen))
            neuron_scores.append(torch.rand(parts.ffn_in.out_features, generator=gen))
            continue
        rows = torch.zeros(parts.query.out_features)
        for lin in (parts.query, parts.key, parts.value):
            ws, bs = _elementwise(lin, crit, gen)
            rows += ws.sum(dim=1) + (bs if bs is not None else 0)
        ws, _ = _elementwise(parts.attn_out, crit, gen)
        rows += ws.sum(dim=0)
        head_scores.append(rows.view(-1, d).sum(dim=1))
        ws, bs = _elementwise(parts.ffn_in, crit, gen)
        neurons = ws.sum(dim=1) + (bs if bs is not None else 0)
        ws, _ = _elementwise(parts.ffn_out, crit, gen)
        neuron_scores.append(neurons + ws.sum(dim=0))
    return head_scores, neuron_scores


def score_unstructured(model: nn.Module, criterion: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Elementwise scores of every prunable encoder weight, keyed by module name.

    Weights already masked to zero by an earlier step score ``-inf`` so they stay pruned.
    """
    from autoprune.models import get_adapter

    crit = get_criterion(criterion)
    gen = torch.Generator().manual_seed(seed)
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, torch.Tensor] = {}
    for parts in get_adapter(model).layers(model):
        for lin in parts.linears().values():
            w = lin.weight.detach()
            grad = getattr(lin, "weight_orig", lin.weight).grad
            s = crit(w, grad, gen).float()
            mask = getattr(lin, "weight_mask", None)
            if mask is not None:
                s = s.masked_fill(mask == 0, float("-inf"))
            out[names[id(lin)]] = s
    return out


def keep_top(scores: torch.Tensor, n_keep: int) -> list[int]:
    """Indices of the ``n_keep`` highest scores, sorted ascending (ties broken by lower index)."""
    n_keep = max(1, min(int(n_keep), scores.numel()))
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(order[:n_keep].tolist())


def n_removed(total: int, sparsity: float) -> int:
    """How many of ``total`` units a sparsity removes: ``round(sparsity * total)``, always keeping one."""
    return min(int(round(sparsity * total)), total - 1)
