"""Classification heads other than the architecture's own: masked mean pooling for BERT.

Sentence-embedding checkpoints (all-MiniLM-L6-v2 among them) are trained on the attention-masked
mean of the last hidden states, not on the ``[CLS]`` pooler that ``BertForSequenceClassification``
classifies from. ``model.pooling: mean`` keeps the BERT classifier (dropout + linear) but feeds it
that mean. The choice is recorded in the model's ``config.json`` (``autoprune_pooling``), so the
dense baseline, every pruned trial model and every export load with the same head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

#: ``config.json`` attribute that records the classification head's pooling
POOLING_ATTR = "autoprune_pooling"
POOLINGS = ("cls", "mean")


class MeanPoolingBertForSequenceClassification(BertForSequenceClassification):
    """``BertForSequenceClassification`` whose classifier reads the masked mean of the last hidden states.

    Same parameters and state-dict keys as the parent (the unused ``[CLS]`` pooler is kept, so
    checkpoints load either way), so surgery, quantization and export treat it like any BERT.

    Example:
        >>> from transformers import BertConfig
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                  intermediate_size=32, num_labels=2)
        >>> m = MeanPoolingBertForSequenceClassification(cfg).eval()
        >>> ids = torch.tensor([[2, 5, 7, 0]]); mask = torch.tensor([[1, 1, 1, 0]])
        >>> m(input_ids=ids, attention_mask=mask).logits.shape
        torch.Size([1, 2])
    """

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        h = out.last_hidden_state
        if attention_mask is None:
            pooled = h.mean(dim=1)
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


def classifier_class(hf_config: Any) -> Any:
    """The class to build a sequence classifier of ``hf_config`` with, by its recorded pooling."""
    from transformers import AutoModelForSequenceClassification

    from autoprune.errors import ModelError

    pooling = getattr(hf_config, POOLING_ATTR, None) or "cls"
    if pooling == "cls":
        return AutoModelForSequenceClassification
    if pooling == "mean":
        if hf_config.model_type != "bert":
            raise ModelError(f"model.pooling 'mean' is implemented for BERT models only; this model is "
                             f"'{hf_config.model_type}': use pooling 'cls' (the architecture's own head)")
        return MeanPoolingBertForSequenceClassification
    raise ModelError(f"config.json: {POOLING_ATTR} is '{pooling}'; expected one of {', '.join(POOLINGS)}")


def build_from_config(hf_config: Any) -> Any:
    """A freshly initialised classifier of ``hf_config`` with its recorded pooling."""
    from transformers import AutoModelForSequenceClassification

    cls = classifier_class(hf_config)
    return cls.from_config(hf_config) if cls is AutoModelForSequenceClassification else cls(hf_config)
