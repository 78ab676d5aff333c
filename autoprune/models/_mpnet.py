"""MPNet: ``mpnet.encoder.layer[i].attention.attn`` (``q`` / ``k`` / ``v`` / ``o``), ``intermediate``, ``output``.

The encoder computes one relative-position bias (``encoder.relative_attention_bias``: one column per
head) and passes the same ``(batch, heads, q, k)`` tensor to every layer. A layer that lost heads
must add only its kept heads' bias, and layers may keep different heads, so the shared embedding is
not cut: each cut layer's attention gets a buffer ``autoprune_bias_heads`` (the original indices of
its heads, in the state dict, so it survives save and load) and a forward pre-hook that selects
those heads of the bias it receives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from autoprune.models._base import Adapter, LayerParts, Slice

#: buffer on a cut layer's ``attention.attn``: which heads of the shared position bias it keeps
BIAS_HEADS = "autoprune_bias_heads"


def _select_bias_heads(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook of ``MPNetSelfAttention(hidden_states, attention_mask, position_bias, ...)``."""
    index = getattr(module, BIAS_HEADS)
    if len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, index), *args[3:])
    elif kwargs.get("position_bias") is not None:
        kwargs = {**kwargs, "position_bias": kwargs["position_bias"].index_select(1, index)}
    return args, kwargs


class MPNetAdapter(Adapter):
    model_type = "mpnet"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, "mpnet", model)

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def parts(self, layer: nn.Module) -> LayerParts:
        att = layer.attention.attn
        return LayerParts(
            block=layer, attention=att, num_heads=int(att.num_attention_heads),
            head_dim=int(att.attention_head_size),
            head_slices=[Slice(att.q, 0), Slice(att.k, 0), Slice(att.v, 0), Slice(att.o, 1)],
            neuron_slices=[Slice(layer.intermediate.dense, 0), Slice(layer.output.dense, 1)],
            attn_out=att.o, ffn_out=layer.output.dense,
            attn_norm=layer.attention.LayerNorm, ffn_norm=layer.output.LayerNorm)

    def set_num_heads(self, parts: LayerParts, n: int) -> None:
        att = parts.attention
        att.num_attention_heads = n
        att.all_head_size = n * att.attention_head_size

    def after_head_cut(self, model: nn.Module, layer_index: int, kept: list[int]) -> None:
        att = self.layer_modules(model)[layer_index].attention.attn
        if hasattr(att, BIAS_HEADS):  # cut before: ``kept`` indexes the heads it still has
            old = getattr(att, BIAS_HEADS)
            setattr(att, BIAS_HEADS, old[torch.tensor(kept, device=old.device)])
        else:
            att.register_buffer(BIAS_HEADS, torch.tensor(kept, dtype=torch.long, device=att.q.weight.device))
            att.register_forward_pre_hook(_select_bias_heads, with_kwargs=True)
