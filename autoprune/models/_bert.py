"""BERT (MiniLM is a BERT) and the families with its layer modules, ``encoder.layer[i].attention.self`` /
``intermediate`` / ``output``: RoBERTa, XLM-RoBERTa and CamemBERT (under ``model.roberta``), ELECTRA
(under ``model.electra``)."""

from __future__ import annotations

import torch.nn as nn

from autoprune.models._base import Adapter, LayerParts, Slice


class BertAdapter(Adapter):
    model_type = "bert"
    prefix = "bert"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.prefix, model)

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def parts(self, layer: nn.Module) -> LayerParts:
        att = layer.attention.self
        out = layer.attention.output
        return LayerParts(
            block=layer, attention=att, num_heads=int(att.num_attention_heads),
            head_dim=int(att.attention_head_size),
            head_slices=[Slice(att.query, 0), Slice(att.key, 0), Slice(att.value, 0), Slice(out.dense, 1)],
            neuron_slices=[Slice(layer.intermediate.dense, 0), Slice(layer.output.dense, 1)],
            attn_out=out.dense, ffn_out=layer.output.dense,
            attn_norm=out.LayerNorm, ffn_norm=layer.output.LayerNorm)

    def set_num_heads(self, parts: LayerParts, n: int) -> None:
        att = parts.attention
        att.num_attention_heads = n
        att.all_head_size = n * att.attention_head_size


class RobertaAdapter(BertAdapter):
    """RoBERTa has BERT's modules under ``model.roberta``."""

    model_type = "roberta"
    prefix = "roberta"


class ElectraAdapter(BertAdapter):
    """ELECTRA has BERT's layer modules under ``model.electra`` (its embedding projection is not pruned)."""

    model_type = "electra"
    prefix = "electra"


class XLMRobertaAdapter(RobertaAdapter):
    """XLM-RoBERTa: RoBERTa's modules and prefix (``model.roberta``); only the vocabulary differs."""

    model_type = "xlm-roberta"


class CamembertAdapter(RobertaAdapter):
    """CamemBERT: RoBERTa's modules and prefix (``model.roberta``); only the vocabulary differs."""

    model_type = "camembert"
