"""Save and load pruned models, in the ``save_pretrained`` / ``from_pretrained`` style.

:func:`save_pruned` writes a directory that :func:`load_pruned` rebuilds exactly: the weights
(``model.safetensors``), the tokenizer, ``config.json`` with an ``autoprune`` section, and, when
given, the :class:`~autoprune.pruner.PruneRecord` (``prune_record.json``). The section records what
the architecture's own config cannot say:

* ``heads_per_layer`` / ``ffn_per_layer``: the shape of every remaining encoder layer (the
  config's depth attribute already counts the remaining layers; ``dropped_layers`` names the
  original layers that went);
* ``pooling``: the classification head (``cls`` or ``mean``, see :mod:`autoprune.models._pooling`);
* ``quantization``: ``dynamic_int8`` when the model is meant to run int8 (ONNX Runtime dynamic
  int8). The float weights are stored and :func:`load_pruned` quantizes them again on load, so an
  int8 export never comes back as a float model unless asked to (``as_float=True``).

This is the one loader of pruned models: trials, export, ``autoprune apply`` and users all call
:func:`load_pruned`; :func:`autoprune.models.load_model` loads base and dense checkpoints only.

Example:
    >>> import tempfile, torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from autoprune.surgery import prune_structured
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
    ...     num_attention_heads=4, intermediate_size=32)).eval()
    >>> _ = prune_structured(model, [[0, 1], [3]], [list(range(8)), list(range(32))])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_pruned(model, d)
    ...     again = load_pruned(d)
    >>> from autoprune.models import get_adapter
    >>> get_adapter(again).shape(again)
    ([2, 1], [8, 32])
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from autoprune.errors import ModelError
from autoprune.models import adapter_for_type, get_adapter
from autoprune.models._pooling import POOLING_ATTR, build_from_config
from autoprune.pruner import PruneRecord
from autoprune.onnx_export import is_int8
from autoprune.surgery import prune_structured

logger = logging.getLogger(__name__)

#: ``config.json`` key of autoprune's section
CONFIG_KEY = "autoprune"
#: file beside ``config.json`` holding the prune record
RECORD_FILE = "prune_record.json"
FORMAT = 1
QUANTIZATIONS = ("dynamic_int8",)


def save_pruned(model: nn.Module, out_dir: str | Path, tokenizer: Any = None, record: PruneRecord | None = None,
                *, quantized: bool = False) -> Path:
    """Save a pruned (float) model with its per-layer shape so :func:`load_pruned` rebuilds it.

    ``tokenizer`` is saved beside it when given; ``record`` (a :class:`~autoprune.pruner.PruneRecord`)
    goes to ``prune_record.json``. ``quantized=True`` marks a model whose policy runs it as ONNX
    Runtime dynamic int8: pass the float model, :func:`load_pruned` quantizes it again. Masks of unstructured pruning
    must be folded in first (:func:`autoprune.surgery.make_unstructured_permanent`).
    """
    if is_int8(model):
        raise ModelError("save_pruned takes the float model (an int8 model is an ONNX Runtime file): save the "
                         "model it was quantized from and pass quantized=True")
    if any(n.endswith("weight_orig") for n, _ in model.named_parameters()):
        raise ModelError("the model still carries unstructured pruning masks; fold them in with "
                         "autoprune.surgery.make_unstructured_permanent(model) before saving")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = get_adapter(model)
    heads, ffn = adapter.shape(model)
    section: dict[str, Any] = dict(getattr(model.config, CONFIG_KEY, None) or {})  # adapters' own keys stay
    section.update({
        "format": FORMAT, "heads_per_layer": heads, "ffn_per_layer": ffn,
        "pooling": getattr(model.config, POOLING_ATTR, None) or "cls",
        "quantization": "dynamic_int8" if quantized else None,
    })
    if record is not None:
        section["dropped_layers"] = list(record.dropped_layers)
    setattr(model.config, CONFIG_KEY, section)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if record is not None:
        (out / RECORD_FILE).write_text(json.dumps(record.to_dict(), indent=1), encoding="utf-8")
    else:
        (out / RECORD_FILE).unlink(missing_ok=True)
    return out


def read_section(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(transformers config, autoprune section)`` of a saved pruned model; :class:`ModelError` if it is none."""
    from transformers import AutoConfig

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelError(f"{p}: no config.json; expected a directory written by autoprune (save_pruned, a trial's "
                         f"saved model or 'autoprune export')")
    try:
        hf = AutoConfig.from_pretrained(str(p))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{p}/config.json: cannot be read: {str(exc).splitlines()[0]}") from None
    meta = getattr(hf, CONFIG_KEY, None)
    if not isinstance(meta, dict) or "heads_per_layer" not in meta or "ffn_per_layer" not in meta:
        raise ModelError(f"{p}/config.json has no '{CONFIG_KEY}' shape record (heads_per_layer/ffn_per_layer); it was "
                         f"not saved by autoprune: load a dense checkpoint with autoprune.load_model")
    return hf, dict(meta)


def _quantization(meta: dict[str, Any], where: str) -> str | None:
    q = meta.get("quantization")
    if q is None and meta.get("quantized"):  # models saved before 2026-12 wrote a flag
        q = "dynamic_int8"
    if q is not None and q not in QUANTIZATIONS:
        raise ModelError(f"{where}: quantization '{q}' is not one autoprune can rebuild ({', '.join(QUANTIZATIONS)}); "
                         f"a newer autoprune may have written it")
    return q


def saved_quantization(path: str | Path) -> str | None:
    """The quantization a saved pruned model is recorded with (``dynamic_int8``), or None for a float model."""
    return _quantization(read_section(Path(path))[1], f"{path}/config.json")


def load_pruned(path: str | Path, *, as_float: bool = False) -> nn.Module:
    """Load a pruned model saved by autoprune, in eval mode: one call, no pickles.

    The architecture is built from ``config.json`` (its depth already counts the remaining layers),
    each layer is cut to the recorded head count and FFN size, then the weights are read with
    ``safetensors``. A model recorded as ``dynamic_int8`` comes back as ONNX Runtime dynamic int8 (an
    :class:`~autoprune.onnx_export.OnnxClassifier`, called like the torch model), unless
    ``as_float=True`` asks for the float weights it is quantized from (what ONNX export quantizes itself).

    Example:
        >>> # model = autoprune.load_pruned("exports/sst2-trial7")
        >>> # logits = model(**tokenizer("great film", return_tensors="pt")).logits
    """
    from safetensors.torch import load_file

    p = Path(path)
    hf, meta = read_section(p)
    where = f"{p}/config.json"
    adapter_for_type(hf.model_type)
    pooling = meta.get("pooling")
    if pooling is not None and pooling != (getattr(hf, POOLING_ATTR, None) or "cls"):
        raise ModelError(f"{where}: '{CONFIG_KEY}.pooling' is '{pooling}' but '{POOLING_ATTR}' is "
                         f"'{getattr(hf, POOLING_ATTR, None)}'; the file was edited by hand: make them agree")
    quantization = _quantization(meta, where)
    model = build_from_config(hf)
    adapter = get_adapter(model)
    heads, ffn = meta["heads_per_layer"], meta["ffn_per_layer"]
    depth = len(adapter.layer_modules(model))
    if len(heads) != depth or len(ffn) != depth:
        raise ModelError(f"{where}: the shape record has {len(heads)} layers but the config has {depth}; the file is "
                         f"corrupt")
    adapter.prepare_rebuilt(model)  # structure the config alone does not describe (adapter-specific)
    prune_structured(model, [list(range(h)) for h in heads], [list(range(f)) for f in ffn])
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{p}: no .safetensors weights found next to config.json")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another size than the recorded shape gives it
        raise ModelError(f"{p}: weights do not match the recorded shape ({str(exc).splitlines()[-1].strip()})") \
            from None
    # buffers (position_ids, token_type_ids) may legitimately be absent from the file
    real_missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if real_missing or unexpected:
        raise ModelError(f"{p}: weights do not match the recorded shape (missing {real_missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    setattr(model.config, CONFIG_KEY, meta)
    model.eval()
    if quantization == "dynamic_int8" and not as_float:
        from autoprune.onnx_export import onnx_int8_model

        return onnx_int8_model(model, threads=torch.get_num_threads())
    return model


def load_record(path: str | Path) -> PruneRecord | None:
    """The :class:`~autoprune.pruner.PruneRecord` saved beside a pruned model, or ``None``."""
    f = Path(path) / RECORD_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{f}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    return PruneRecord.from_dict(data, source=str(f))


__all__ = ["CONFIG_KEY", "RECORD_FILE", "load_pruned", "load_record", "read_section", "save_pruned"]
