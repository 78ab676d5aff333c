"""DistilBERT: ``transformer.layer[i].attention`` (q_lin/k_lin/v_lin/out_lin) and ``ffn`` (lin1/lin2)."""

from __future__ import annotations

import torch.nn as nn

from autoprune.models._base import Adapter, LayerParts


class DistilBertAdapter(Adapter):
    model_type = "distilbert"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, "distilbert", model)

    def layers(self, model: nn.Module) -> list[LayerParts]:
        out = []
        for layer in self.base(model).transformer.layer:
            att = layer.attention
            out.append(LayerParts(attention=att, query=att.q_lin, key=att.k_lin, value=att.v_lin,
                                  attn_out=att.out_lin, ffn_in=layer.ffn.lin1, ffn_out=layer.ffn.lin2))
        return out

    def num_heads(self, parts: LayerParts) -> int:
        return int(parts.attention.n_heads)

    def set_num_heads(self, parts: LayerParts, n: int) -> None:
        parts.attention.n_heads = n

    def head_dim(self, model: nn.Module) -> int:
        return int(self.layers(model)[0].attention.attention_head_size)
