"""ModernBERT: ``model.layers[i]`` with a fused ``attn.Wqkv``, ``attn.Wo`` and a gated ``mlp.Wi`` / ``mlp.Wo``.

* ``Wqkv`` rows are ``[q | k | v]``, each ``heads x head_dim``: a head owns its rows in all three
  blocks (``chunks=3``). The attention reshapes with ``view(..., 3, -1, head_dim)``, so it keeps no
  head count to update.
* ``Wi`` rows are ``[input | gate]`` and the MLP computes ``Wo(act(input) * gate)``: neuron ``j`` owns
  row ``j`` of both halves (``chunks=2``) and column ``j`` of ``Wo``.
* Local (sliding-window) and global layers: transformers decides a layer's attention type *by its
  index* (``config.layer_types[layer_idx]`` at construction), and so is the first layer special (its
  ``attn_norm`` is an ``Identity``). Dropping layers therefore rewrites ``config.layer_types`` to the
  kept layers' own types, and when the first layer goes, records that the new first layer has a
  LayerNorm so a model rebuilt from the config gets one (:meth:`ModernBertAdapter.prepare_rebuilt`).
  Heads of local and global layers are ordinary heads: both are pruned alike.
"""

from __future__ import annotations

import torch.nn as nn

from autoprune.models._base import Adapter, LayerParts, Slice

#: key in ``config.autoprune``: the first layer has a pre-attention LayerNorm (its original first layer was dropped)
FIRST_NORM_KEY = "first_layer_attn_norm"


class ModernBertAdapter(Adapter):
    model_type = "modernbert"

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, "model", model)

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).layers

    def parts(self, layer: nn.Module) -> LayerParts:
        att, mlp = layer.attn, layer.mlp
        d = int(att.head_dim)
        return LayerParts(
            block=layer, attention=att, num_heads=int(att.Wqkv.out_features) // (3 * d), head_dim=d,
            head_slices=[Slice(att.Wqkv, 0, chunks=3), Slice(att.Wo, 1)],
            neuron_slices=[Slice(mlp.Wi, 0, chunks=2), Slice(mlp.Wo, 1)],
            attn_out=att.Wo, ffn_out=mlp.Wo)  # pre-LayerNorm blocks: no attn_norm / ffn_norm

    def set_num_heads(self, parts: LayerParts, n: int) -> None:
        """Nothing to record: the head count is read from ``Wqkv``'s shape."""

    def set_layers(self, model: nn.Module, keep: list[int]) -> None:
        layers = self.layer_modules(model)
        types = [layers[i].attention_type for i in keep]
        first_has_norm = not isinstance(layers[keep[0]].attn_norm, nn.Identity)
        super().set_layers(model, keep)
        model.config.layer_types = types
        meta = dict(getattr(model.config, "autoprune", None) or {})
        meta[FIRST_NORM_KEY] = first_has_norm
        model.config.autoprune = meta

    def prepare_rebuilt(self, model: nn.Module) -> None:
        if (getattr(model.config, "autoprune", None) or {}).get(FIRST_NORM_KEY):
            cfg = model.config
            first = self.layer_modules(model)[0]
            if isinstance(first.attn_norm, nn.Identity):
                first.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
