"""Model loading and per-architecture adapters.

Architecture-specific code lives only here: an adapter knows where a family keeps its
attention heads and FFN blocks. Adding a family is one new module with an :class:`Adapter` subclass,
passed to :func:`register_adapter`.

Example:
    >>> from autoprune.models import supported_model_types
    >>> supported_model_types()
    ('bert', 'camembert', 'deberta-v2', 'distilbert', 'electra', 'modernbert', 'mpnet', 'roberta', 'xlm-roberta')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import ModelError
from autoprune.models._base import Adapter, LayerParts
from autoprune.models._bert import BertAdapter, CamembertAdapter, ElectraAdapter, RobertaAdapter, XLMRobertaAdapter
from autoprune.models._deberta import DebertaV2Adapter
from autoprune.models._distilbert import DistilBertAdapter
from autoprune.models._modernbert import ModernBertAdapter
from autoprune.models._mpnet import MPNetAdapter

if TYPE_CHECKING:
    import torch.nn as nn

    from autoprune.config import RunConfig

logger = logging.getLogger(__name__)

_ADAPTERS: dict[str, Adapter] = {}

#: what an adapter must provide, for the unsupported-architecture error
ADAPTER_CONTRACT = (
    "an autoprune.models.Adapter subclass with model_type, base(model) (the encoder inside the task model), "
    "layer_modules(model) (its list of layers), parts(layer) (a LayerParts: the slices of the Linears each "
    "attention head and FFN neuron owns and the two output projections) and set_num_heads(parts, n), "
    "registered with autoprune.models.register_adapter()")


def register_adapter(adapter: Adapter) -> Adapter:
    """Make ``adapter`` the one used for models whose ``config.model_type`` is ``adapter.model_type``."""
    if not adapter.model_type:
        raise ValueError(f"{type(adapter).__name__} sets no model_type")
    _ADAPTERS[adapter.model_type] = adapter
    return adapter


for _adapter in (BertAdapter(), CamembertAdapter(), DebertaV2Adapter(), DistilBertAdapter(), ElectraAdapter(),
                 ModernBertAdapter(), MPNetAdapter(), RobertaAdapter(), XLMRobertaAdapter()):
    register_adapter(_adapter)


def supported_model_types() -> tuple[str, ...]:
    """The ``config.model_type`` values that have an adapter, sorted."""
    return tuple(sorted(_ADAPTERS))


#: the model types with a built-in adapter
SUPPORTED_MODEL_TYPES = supported_model_types()


def adapter_for_type(model_type: str) -> Adapter:
    """The adapter of a ``config.model_type``; a clear :class:`ModelError` names the supported ones."""
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise ModelError(
            f"unsupported architecture '{model_type}'; autoprune supports model_type "
            f"{', '.join(supported_model_types())}. To add one, write {ADAPTER_CONTRACT}"
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
    return adapter_for_type(hf.model_type).depth(hf)


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
        kw["ignore_mismatched_sizes"] = True  # a new classifier of num_labels replaces the checkpoint's
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


__all__ = ["ADAPTER_CONTRACT", "Adapter", "LayerParts", "SUPPORTED_MODEL_TYPES", "adapter_for_type", "get_adapter",
           "load_model", "model_depth", "register_adapter", "supported_model_types"]
