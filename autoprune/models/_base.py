"""The adapter interface: where one architecture family keeps its heads and FFN blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class LayerParts:
    """The prunable pieces of one encoder layer."""

    attention: nn.Module  # the self-attention module holding the head count
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear  # projection back to the hidden size (input columns = heads)
    ffn_in: nn.Linear  # hidden -> intermediate (output rows = neurons)
    ffn_out: nn.Linear  # intermediate -> hidden (input columns = neurons)

    def linears(self) -> dict[str, nn.Linear]:
        return {"query": self.query, "key": self.key, "value": self.value, "attn_out": self.attn_out,
                "ffn_in": self.ffn_in, "ffn_out": self.ffn_out}


class Adapter:
    """Per-family access to encoder layers. Subclasses set ``model_type`` and implement the hooks."""

    model_type: str = ""

    def base(self, model: nn.Module) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[LayerParts]:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_heads(self, parts: LayerParts) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_num_heads(self, parts: LayerParts, n: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def head_dim(self, model: nn.Module) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def hidden_size(self, model: nn.Module) -> int:
        return self.layers(model)[0].query.in_features

    def shape(self, model: nn.Module) -> tuple[list[int], list[int]]:
        """(heads per layer, FFN neurons per layer) as the model stands now."""
        parts = self.layers(model)
        return [self.num_heads(p) for p in parts], [p.ffn_in.out_features for p in parts]
