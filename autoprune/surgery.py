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
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from autoprune.errors import PolicyError
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

    Indices refer to the model as it stands. The per-layer shape is recorded in
    ``model.config.autoprune`` so a saved model can be rebuilt with the same shapes.
    """
    from autoprune.models import get_adapter

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
    record_shape(model)
    return model


def drop_layers(model: nn.Module, drop: Sequence[int]) -> nn.Module:
    """Remove whole encoder layers (indices of the model as it stands), keeping the rest in order."""
    from autoprune.models import get_adapter

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
    record_shape(model)
    return model


def record_shape(model: nn.Module) -> dict[str, Any]:
    """Write the per-layer head counts and FFN sizes into ``model.config.autoprune``."""
    from autoprune.models import get_adapter

    heads, ffn = get_adapter(model).shape(model)
    meta = dict(getattr(model.config, "autoprune", None) or {})
    meta.update({"heads_per_layer": heads, "ffn_per_layer": ffn})
    model.config.autoprune = meta
    return meta


def reshape_to(model: nn.Module, heads_per_layer: Sequence[int], ffn_per_layer: Sequence[int]) -> nn.Module:
    """Resize a freshly built model's layers to the given shape (weights to be loaded afterwards)."""
    from autoprune.models import get_adapter

    adapter = get_adapter(model)
    adapter.prepare_rebuilt(model)
    heads, ffn = adapter.shape(model)
    if len(heads_per_layer) != len(heads) or len(ffn_per_layer) != len(ffn):
        raise PolicyError(f"saved shape has {len(heads_per_layer)} layers, the architecture has {len(heads)}")
    return prune_structured(model, [list(range(h)) for h in heads_per_layer], [list(range(f)) for f in ffn_per_layer])


def load_reshaped(path: str, hf_config: Any) -> nn.Module:
    """Rebuild a pruned model saved by autoprune: dense architecture -> :func:`reshape_to` -> weights."""
    from pathlib import Path

    from safetensors.torch import load_file
    from autoprune.models._pooling import build_from_config

    meta = dict(hf_config.autoprune)
    model = build_from_config(hf_config)
    reshape_to(model, meta["heads_per_layer"], meta["ffn_per_layer"])
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        from autoprune.errors import ModelError

        raise ModelError(f"{path}: no .safetensors weights found next to config.json")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied / buffer entries (e.g. position_ids) may legitimately be absent
    real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if real_missing or unexpected:
        from autoprune.errors import ModelError

        raise ModelError(f"{path}: weights do not match the recorded shape (missing {real_missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.config.autoprune = meta
    model.eval()
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
    from autoprune.models import get_adapter

    zeros = total = 0
    for parts in get_adapter(model).layers(model):
        for lin in parts.linears():
            w = lin.weight
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)
