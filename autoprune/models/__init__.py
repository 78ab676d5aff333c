"""Model loading and per-architecture adapters.

Architecture-specific code lives only here: an adapter knows where a family keeps its
attention heads and FFN blocks. Adding a family is one new module that registers an adapter.

Example:
    >>> from autoprune.models import SUPPORTED_MODEL_TYPES
    >>> SUPPORTED_MODEL_TYPES
    ('bert', 'distilbert', 'roberta')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import ModelError
from autoprune.models._base import Adapter, LayerParts
from autoprune.models._bert import BertAdapter, RobertaAdapter
from autoprune.models._distilbert import DistilBertAdapter

if TYPE_CHECKING:
    import torch.nn as nn

    from autoprune.config import RunConfig

logger = logging.getLogger(__name__)

_ADAPTERS: dict[str, Adapter] = {a.model_type: a for a in (BertAdapter(), DistilBertAdapter(), RobertaAdapter())}
SUPPORTED_MODEL_TYPES = tuple(sorted(_ADAPTERS))


def adapter_for_type(model_type: str) -> Adapter:
    """The adapter of a ``config.model_type``; a clear :class:`ModelError` names the supported ones."""
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise ModelError(
            f"unsupported architecture '{model_type}'; autoprune supports model_type "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (add an adapter in autoprune/models/ for others)"
        ) from None


def get_adapter(model: "nn.Module") -> Adapter:
    """The adapter for a loaded model, selected by ``model.config.model_type``."""
    return adapter_for_type(getattr(model.config, "model_type", type(model).__name__))


def _hf_config(name_or_path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        local = Path(name_or_path)
        hint = ("the directory has no usable config.json" if local.is_dir() else
                "it is neither a local directory nor a reachable Hub model id (no network: use a local path)")
        raise ModelError(f"cannot load model '{name_or_path}': {hint} ({str(exc).splitlines()[0]})") from None


def model_depth(config: "RunConfig") -> int:
    """Number of encoder layers of the configured model, read from its config only."""
    hf = _hf_config(config.model.resolve())
    adapter_for_type(hf.model_type)
    return int(getattr(hf, "num_hidden_layers", getattr(hf, "n_layers", 0)))


def load_model(name_or_path: str, num_labels: int | None = None, pooling: str | None = None) -> "nn.Module":
    """Load a base or dense sequence classifier with ``AutoModelForSequenceClassification``.

    ``pooling`` (``cls`` or ``mean``) sets the classification head of a base checkpoint; a dense
    baseline saved by autoprune keeps the head recorded in its ``config.json``. A pruned model
    (its config has an ``autoprune`` shape record) is refused with a pointer to
    :func:`autoprune.serialization.load_pruned`, the loader that rebuilds its per-layer shape.
    """
    from transformers.utils import logging as hf_logging

    from autoprune.models._pooling import POOLING_ATTR, classifier_class

    hf_logging.disable_progress_bar()  # per-tensor loading bars drown the trial's own progress
    hf = _hf_config(name_or_path)
    adapter_for_type(hf.model_type)
    kw: dict[str, Any] = {}
    if num_labels is not None and getattr(hf, "num_labels", None) != num_labels:
        hf.num_labels = num_labels
        hf.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        hf.label2id = {v: k for k, v in hf.id2label.items()}
    if pooling is not None:
        setattr(hf, POOLING_ATTR, pooling)
    if getattr(hf, "autoprune", None):
        raise ModelError(f"'{name_or_path}' is a pruned model saved by autoprune (its layers have their own shapes); "
                         f"load it with autoprune.load_pruned('{name_or_path}')")
    cls = classifier_class(hf)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the classifier head is new on a base checkpoint: expected
    try:
        model = cls.from_pretrained(name_or_path, config=hf, **kw)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load weights of '{name_or_path}': {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


__all__ = ["Adapter", "LayerParts", "SUPPORTED_MODEL_TYPES", "adapter_for_type", "get_adapter", "load_model",
           "model_depth"]
