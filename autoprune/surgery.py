"""Cutting units out of a model (through an adapter). Knows nothing of how units were scored.

* Structured: attention heads (rows of q/k/v, columns of the attention output) and FFN neurons
  (rows of the intermediate projection, columns of the output projection) are removed; the
  result is a smaller *dense* model that runs faster in stock PyTorch and can still be trained.
* Unstructured: individual weights are zeroed through ``torch.nn.utils.prune`` masks, which keep
  them at zero during retraining; :func:`make_unstructured_permanent` folds the masks in.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(4, 3)
    >>> _slice_linear(lin, torch.tensor([0, 2]), dim=0).weight.shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from autoprune.errors import PolicyError
from autoprune.models import get_adapter
from autoprune.models._base import Slice

logger = logging.getLogger(__name__)


def _slice_linear(lin: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0: output rows, 1: input columns)."""
    w = lin.weight.detach().index_select(dim, index).clone()
    b = lin.bias.detach().clone() if lin.bias is not None else None
    if dim == 0 and b is not None:
        b = b.index_select(0, index).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.train(lin.training)
    return new


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    out: dict[int, tuple[nn.Module, str]] = {}
    for mod in model.modules():
        for attr, child in mod.named_children():
            out[id(child)] = (mod, attr)
    return out


def _check_keep(kind: str, layer: int, keep: Sequence[int], total: int) -> list[int]:
    keep = sorted(int(i) for i in keep)
    if not keep:
        raise PolicyError(f"layer {layer}: keeping no {kind} is not supported; keep at least one per layer "
                          f"(drop the whole layer instead)")
    if len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= total:
        raise PolicyError(f"layer {layer}: kept {kind} indices {keep} are not distinct indices in [0, {total})")
    return keep


def _cut(parents: dict[int, tuple[nn.Module, str]], slices: Sequence[Slice], keep: list[int], *, width: int,
         total: int) -> None:
    """Replace every sliced Linear by a copy keeping only the positions of the ``keep`` units."""
    for s in slices:
        index = s.positions(keep, width=width, units_total=total).to(s.linear.weight.device)
        parent, attr = parents[id(s.linear)]
        new = _slice_linear(s.linear, index, s.dim)
        setattr(parent, attr, new)
        parents[id(new)] = (parent, attr)


def prune_structured(model: nn.Module, kept_heads: Sequence[Sequence[int]] | None = None,
                     kept_neurons: Sequence[Sequence[int]] | None = None) -> nn.Module:
    """Physically remove every head / FFN neuron not listed as kept, layer by layer (in place).

    Indices refer to the model as it stands. :func:`autoprune.serialization.save_pruned` records
    the resulting per-layer shape, so a saved model is rebuilt with it.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    for name, kept in (("kept_heads", kept_heads), ("kept_neurons", kept_neurons)):
        if kept is not None and len(kept) != len(layers):
            raise PolicyError(f"{name} has {len(kept)} layers but the model has {len(layers)}")
    parents = _parents(model)
    for i, parts in enumerate(layers):
        if kept_heads is not None:
            keep = _check_keep("heads", i, kept_heads[i], parts.num_heads)
            if len(keep) < parts.num_heads:
                _cut(parents, parts.head_slices, keep, width=parts.head_dim, total=parts.num_heads)
                parts = adapter.parts(parts.block)
                adapter.set_num_heads(parts, len(keep))
                adapter.after_head_cut(model, i, keep)
        if kept_neurons is not None:
            keep = _check_keep("FFN neurons", i, kept_neurons[i], parts.num_neurons)
            if len(keep) < parts.num_neurons:
                _cut(parents, parts.neuron_slices, keep, width=1, total=parts.num_neurons)
    return model


def drop_layers(model: nn.Module, drop: Sequence[int]) -> nn.Module:
    """Remove whole encoder layers (indices of the model as it stands), keeping the rest in order."""
    adapter = get_adapter(model)
    n = len(adapter.layer_modules(model))
    drop_set = {int(i) for i in drop}
    bad = sorted(i for i in drop_set if not 0 <= i < n)
    if bad:
        raise PolicyError(f"drop_layers {sorted(drop_set)}: indices {bad} are outside [0, {n})")
    if len(drop_set) >= n:
        raise PolicyError(f"drop_layers removes all {n} encoder layers; keep at least one")
    if drop_set:
        adapter.set_layers(model, [i for i in range(n) if i not in drop_set])
    return model


# ----------------------------------------------------------------------------- unstructured
def prune_unstructured(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Apply weight masks (module name -> 0/1 tensor shaped like its weight) via ``torch.nn.utils.prune``.

    A module that already carries a mask gets the product (pruned weights stay pruned).
    """
    named = dict(model.named_modules())
    for name, mask in masks.items():
        mod = named[name]
        if tprune.is_pruned(mod) and hasattr(mod, "weight_mask"):
            mask = mask * mod.weight_mask
            tprune.remove(mod, "weight")
        tprune.custom_from_mask(mod, "weight", mask.to(mod.weight.dtype))
    return model


def make_unstructured_permanent(model: nn.Module) -> nn.Module:
    """Fold ``torch.nn.utils.prune`` masks into the weights (zeros stay, the reparametrisation goes)."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear) and tprune.is_pruned(mod) and hasattr(mod, "weight_orig"):
            tprune.remove(mod, "weight")
    return model


def encoder_weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights in the encoder's prunable Linear layers."""
    zeros = total = 0
    for parts in get_adapter(model).layers(model):
        for lin in parts.linears():
            w = lin.weight
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)
