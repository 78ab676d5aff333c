"""The adapter interface: where one architecture family keeps its heads, FFN neurons and layers.

An adapter describes each encoder layer as a :class:`LayerParts`: which slices of which Linear
layers every attention head and every FFN neuron owns (:class:`Slice`), and the two output
projections whose *input columns* are the heads' outputs and the neurons' activations. Criteria
score units through the slices, surgery cuts the slices, and mask-based methods (Fisher
importance, reconstruction) act at the inputs of the two output projections; none of them knows
an architecture. Fused projections are slices with ``chunks``: ModernBERT's ``Wqkv`` is one
Linear whose rows are ``[q | k | v]`` (``chunks=3``), its gated ``Wi`` rows ``[input | gate]``
(``chunks=2``).

Example:
    >>> import torch.nn as nn
    >>> qkv = nn.Linear(8, 3 * 4)            # 2 heads of width 2, q/k/v fused
    >>> Slice(qkv, dim=0, chunks=3).positions([1], width=2, units_total=2).tolist()
    [2, 3, 6, 7, 10, 11]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Slice:
    """The part of ``linear`` a set of units owns along ``dim`` (0: output rows and their bias
    entries, 1: input columns). The dimension is ``chunks`` equal blocks; in each block unit ``i``
    owns positions ``[i * width, (i + 1) * width)``."""

    linear: nn.Linear
    dim: int
    chunks: int = 1

    def size(self) -> int:
        """Length of the sliced dimension."""
        return int(self.linear.weight.shape[self.dim])

    def positions(self, units: Sequence[int], *, width: int, units_total: int) -> torch.Tensor:
        """Indices along ``dim`` owned by ``units`` (in the given order), block by block."""
        block = units_total * width
        if block * self.chunks != self.size():
            raise ValueError(f"slice of size {self.size()} is not {self.chunks} blocks of {units_total} x {width}")
        per_unit = [torch.arange(u * width, (u + 1) * width) for u in units]
        inside = torch.cat(per_unit) if per_unit else torch.zeros(0, dtype=torch.long)
        return torch.cat([inside + c * block for c in range(self.chunks)]).long()

    def unit_sums(self, values: torch.Tensor, *, width: int, units_total: int) -> torch.Tensor:
        """Sum a per-position vector along ``dim`` into one value per unit (over blocks and width)."""
        return values.view(self.chunks, units_total, width).sum(dim=(0, 2))


@dataclass
class LayerParts:
    """The prunable pieces of one encoder layer.

    * ``block``: the encoder layer module itself (layer dropping removes it whole);
    * ``attention``: the module holding the head count (the adapter updates it after a cut);
    * ``head_slices`` / ``neuron_slices``: every slice a head / an FFN neuron owns, the output
      projections' input columns included;
    * ``attn_out`` / ``ffn_out``: the projections back to the hidden size, whose input columns are
      the heads' concatenated outputs / the neurons' activations (where unit masks act);
    * ``attn_norm`` / ``ffn_norm``: for post-LayerNorm blocks, the LayerNorm whose input is the
      sublayer's output plus its residual (reconstruction fits that sum); ``None`` for pre-LN blocks.
    """

    block: nn.Module
    attention: nn.Module
    num_heads: int
    head_dim: int
    head_slices: list[Slice]
    neuron_slices: list[Slice]
    attn_out: nn.Linear
    ffn_out: nn.Linear
    attn_norm: nn.Module | None = None
    ffn_norm: nn.Module | None = None
    extra: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def num_neurons(self) -> int:
        return int(self.ffn_out.in_features)

    def linears(self) -> list[nn.Linear]:
        """Every distinct Linear a unit owns a slice of (the weights unstructured pruning may zero)."""
        seen: dict[int, nn.Linear] = {}
        for s in self.head_slices + self.neuron_slices:
            seen.setdefault(id(s.linear), s.linear)
        return list(seen.values())


class Adapter:
    """Per-family access to encoder layers. Subclasses set ``model_type`` and implement
    :meth:`base`, :meth:`layer_modules`, :meth:`parts` and :meth:`set_num_heads`; architectures with
    couplings beyond the slices (a per-head bias shared across layers) override :meth:`after_head_cut`,
    those whose layers depend on their index override :meth:`set_layers` (and :meth:`prepare_rebuilt`),
    those with work outside their sliced Linears (a gated FFN is just three sliced matrices; relative
    position projections are not) override :meth:`layer_macs`.
    """

    model_type: str = ""

    def base(self, model: nn.Module) -> nn.Module:  # pragma: no cover - abstract
        """The encoder model inside the task model (``model.bert`` for BERT)."""
        raise NotImplementedError

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:  # pragma: no cover - abstract
        """The encoder's list of layers, in order."""
        raise NotImplementedError

    def parts(self, layer: nn.Module) -> LayerParts:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_num_heads(self, parts: LayerParts, n: int) -> None:  # pragma: no cover - abstract
        """Record on the attention module that it now has ``n`` heads."""
        raise NotImplementedError

    def after_head_cut(self, model: nn.Module, layer_index: int, kept: list[int]) -> None:
        """Couplings outside the slices (default: none). ``kept`` indexes the heads before the cut."""

    def prepare_rebuilt(self, model: nn.Module) -> None:
        """On a model freshly built from a saved config, re-create the structure the config alone does
        not describe (default: nothing). :func:`autoprune.serialization.load_pruned` calls it before resizing."""

    def layer_macs(self, parts: LayerParts, seq_len: int, batch_size: int = 1) -> int:
        """Multiply-accumulates of one encoder layer for ``batch_size`` x ``seq_len`` tokens: every Linear a
        unit owns, applied to every token, plus attention scores and the weighted sum of values
        (``2 * seq_len * heads * head_dim`` per token). Layer norms and activations are left out."""
        linear = sum(lin.in_features * lin.out_features for lin in parts.linears())
        attention = 2 * seq_len * parts.num_heads * parts.head_dim
        return seq_len * batch_size * (linear + attention)

    def set_layers(self, model: nn.Module, keep: list[int]) -> None:
        """Keep only the encoder layers ``keep`` (indices in order) and record the new depth."""
        layers = self.layer_modules(model)
        kept = nn.ModuleList([layers[i] for i in keep])
        parent, attr = self._layers_owner(model)
        setattr(parent, attr, kept)
        self.set_depth(model.config, len(keep))

    def _layers_owner(self, model: nn.Module) -> tuple[nn.Module, str]:
        target = self.layer_modules(model)
        for mod in model.modules():
            for attr, child in mod.named_children():
                if child is target:
                    return mod, attr
        raise RuntimeError("encoder layer list not found")  # pragma: no cover - adapters return a child

    def depth_attr(self, hf_config: object) -> str:
        """The config attribute that holds the number of encoder layers."""
        return "num_hidden_layers"

    def depth(self, hf_config: object) -> int:
        return int(getattr(hf_config, self.depth_attr(hf_config)))

    def set_depth(self, hf_config: object, n: int) -> None:
        setattr(hf_config, self.depth_attr(hf_config), n)

    # ------------------------------------------------------------------ derived
    def layers(self, model: nn.Module) -> list[LayerParts]:
        return [self.parts(layer) for layer in self.layer_modules(model)]

    def hidden_size(self, model: nn.Module) -> int:
        return int(self.layers(model)[0].attn_out.out_features)

    def head_dim(self, model: nn.Module) -> int:
        return int(self.layers(model)[0].head_dim)

    def shape(self, model: nn.Module) -> tuple[list[int], list[int]]:
        """(heads per layer, FFN neurons per layer) as the model stands now."""
        parts = self.layers(model)
        return [p.num_heads for p in parts], [p.num_neurons for p in parts]
