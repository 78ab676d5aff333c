"""DeBERTa-v2 and -v3 (``model_type`` ``deberta-v2``): ``deberta.encoder.layer[i].attention.self``
(``query_proj`` / ``key_proj`` / ``value_proj``), ``attention.output``, ``intermediate``, ``output``.

Disentangled attention adds, per head, content-to-position (``c2p``: queries against projected
relative-position keys) and position-to-content (``p2c``) scores. With ``share_att_key`` (DeBERTa-v3)
the relative embeddings go through ``query_proj`` / ``key_proj`` themselves, so cutting those rows
cuts the position projections too. Without it, ``pos_key_proj`` (present with ``c2p``) and
``pos_query_proj`` (with ``p2c``) are separate Linears whose rows a head also owns. The relative
embeddings are shared by every layer and indexed by position, not by head, so they are not cut.

A DeBERTa-v2 with a convolution (``conv_kernel_size > 0``) applies it to the output of the first
encoder layer, whichever that is: dropping layer 0 there is refused (it would change the function).
"""

from __future__ import annotations

import torch.nn as nn

from autoprune.errors import PolicyError
from autoprune.models._base import Adapter, LayerParts, Slice
from autoprune.models._bert import BertAdapter

_POSITION_PROJECTIONS = ("pos_key_proj", "pos_query_proj")


class DebertaV2Adapter(Adapter):
    model_type = "deberta-v2"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, "deberta", model)

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def parts(self, layer: nn.Module) -> LayerParts:
        att, out = layer.attention.self, layer.attention.output
        position = [Slice(getattr(att, n), 0) for n in _POSITION_PROJECTIONS if hasattr(att, n)]
        return LayerParts(
            block=layer, attention=att, num_heads=int(att.num_attention_heads),
            head_dim=int(att.attention_head_size),
            head_slices=[Slice(att.query_proj, 0), Slice(att.key_proj, 0), Slice(att.value_proj, 0), *position,
                         Slice(out.dense, 1)],
            neuron_slices=[Slice(layer.intermediate.dense, 0), Slice(layer.output.dense, 1)],
            attn_out=out.dense, ffn_out=layer.output.dense,
            attn_norm=out.LayerNorm, ffn_norm=layer.output.LayerNorm)

    set_num_heads = BertAdapter.set_num_heads  # the same attributes (num_attention_heads, all_head_size)

    def set_layers(self, model: nn.Module, keep: list[int]) -> None:
        if keep[0] != 0 and getattr(self.base(model).encoder, "conv", None) is not None:
            raise PolicyError("this DeBERTa-v2 applies a convolution (conv_kernel_size "
                              f"{model.config.conv_kernel_size}) after encoder layer 0, so layer 0 cannot be "
                              "dropped; keep layer 0 (drop others)")
        super().set_layers(model, keep)

    def layer_macs(self, parts: LayerParts, seq_len: int, batch_size: int = 1) -> int:
        """Token projections and content attention as the default; plus, for relative attention, the
        projections of the ``2 * pos_ebd_size`` relative embeddings (once per forward) and the
        ``c2p`` / ``p2c`` scores of every token against them."""
        att = parts.attention
        own = [getattr(att, n) for n in _POSITION_PROJECTIONS if hasattr(att, n)]
        tokens = seq_len * batch_size
        token_linear = sum(lin.in_features * lin.out_features for lin in parts.linears()
                           if all(lin is not p for p in own))
        macs = tokens * (token_linear + 2 * seq_len * parts.num_heads * parts.head_dim)
        if getattr(att, "relative_attention", False):
            kinds = sum(k in att.pos_att_type for k in ("c2p", "p2c"))
            rows = 2 * int(att.pos_ebd_size)
            projections = 2 if att.share_att_key else len(own)  # shared: query_proj and key_proj both run
            macs += projections * rows * att.query_proj.in_features * parts.num_heads * parts.head_dim
            macs += tokens * kinds * rows * parts.num_heads * parts.head_dim
        return macs
