"""DistilBERT: ``transformer.layer[i].attention`` (q_lin/k_lin/v_lin/out_lin) and ``ffn`` (lin1/lin2)."""

from __future__ import annotations

import torch.nn as nn

from autoprune.models._base import Adapter, LayerParts, Slice


class DistilBertAdapter(Adapter):
    model_type = "distilbert"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, "distilbert", model)

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).transformer.layer

    def depth_attr(self, hf_config: object) -> str:
        return "n_layers"

    def parts(self, layer: nn.Module) -> LayerParts:
        att = layer.attention
        return LayerParts(
            block=layer, attention=att, num_heads=int(att.n_heads), head_dim=int(att.attention_head_size),
            head_slices=[Slice(att.q_lin, 0), Slice(att.k_lin, 0), Slice(att.v_lin, 0), Slice(att.out_lin, 1)],
            neuron_slices=[Slice(layer.ffn.lin1, 0), Slice(layer.ffn.lin2, 1)],
            attn_out=att.out_lin, ffn_out=layer.ffn.lin2,
            attn_norm=layer.sa_layer_norm, ffn_norm=layer.output_layer_norm)

    def set_num_heads(self, parts: LayerParts, n: int) -> None:
        parts.attention.n_heads = n
