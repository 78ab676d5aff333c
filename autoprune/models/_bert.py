"""BERT (MiniLM is a BERT) and RoBERTa: ``encoder.layer[i].attention.self`` / ``intermediate`` / ``output``."""

from __future__ import annotations

import torch.nn as nn

from autoprune.models._base import Adapter, LayerParts


class BertAdapter(Adapter):
    model_type = "bert"
    prefix = "bert"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.prefix, model)

    def layers(self, model: nn.Module) -> list[LayerParts]:
        out = []
        for layer in self.base(model).encoder.layer:
            att = layer.attention.self
            out.append(LayerParts(attention=att, query=att.query, key=att.key, value=att.value,
                                  attn_out=layer.attention.output.dense, ffn_in=layer.intermediate.dense,
                                  ffn_out=layer.output.dense))
        return out

    def num_heads(self, parts: LayerParts) -> int:
        return int(parts.attention.num_attention_heads)

    def set_num_heads(self, parts: LayerParts, n: int) -> None:
        att = parts.attention
        att.num_attention_heads = n
        att.all_head_size = n * att.attention_head_size

    def head_dim(self, model: nn.Module) -> int:
        return int(self.layers(model)[0].attention.attention_head_size)


class RobertaAdapter(BertAdapter):
    model_type = "roberta"
    prefix = "roberta"
