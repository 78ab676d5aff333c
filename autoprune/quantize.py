"""int8 for ``quantize: true`` policies: ONNX Runtime dynamic int8, and quantization-aware retraining for it.

An int8 policy runs where int8 survives deployment: ONNX Runtime. The pieces, one per step:

* :func:`fake_quantized` wraps every ``nn.Linear`` for the duration of retraining so the forward
  pass sees the rounding that ONNX Runtime's dynamic int8 will apply (``qat: true``); gradients
  pass straight through the rounding. The wrapped model keeps its float parameters, so the
  optimiser and the state dict are unchanged and nothing is left behind when the context exits.
* :func:`quantize_onnx_int8` quantizes an exported float ONNX model (``MatMulInteger`` with
  per-channel int8 weights); :func:`autoprune.onnx_export.onnx_int8_model` exports a float torch
  model and returns the int8 result as an :class:`~autoprune.onnx_export.OnnxClassifier`, which
  trials score like any torch classifier.

There is no torch int8 path: ``torch.ao`` dynamic quantization is deprecated, and torchao's int8
gave no eager CPU speedup on MiniLM-L6 (0.94x at batch 32 x 64, 0.76x at 1 x 64, 1 thread;
``benchmarks/runtimes.py``, docs/BENCHMARKS.md), so int8 policies are measured in an
``onnxruntime`` target (:func:`autoprune.runtimes.check_int8`).

The simulation follows ONNX Runtime's dynamic MatMul: weights int8 symmetric with one scale per
output channel, inputs quantized on the fly to unsigned 8-bit (0..255) with a scale and zero point
from the tensor's min and max. The input scale covers the whole tensor, so autoprune scores int8
models one sentence at a time (:func:`autoprune.measure.eval_batch_size`) and the simulation takes
one scale per sentence (per row of the batch), the scale that sentence gets at inference. When the
wrapped model is scored (eval mode), that scale is taken over the sentence's own tokens only (the
``attention_mask`` of the model's call), so a padded batch predicts what one sentence at a time does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FakeQuantLinear", "fake_quantized", "has_fake_quant", "is_onnx_int8", "quantize_onnx_int8"]

_ACT_QMAX = 255  # ONNX Runtime's DynamicQuantizeLinear: uint8 0..255


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 (the weights of ``quantize_onnx_int8(per_channel=True)``)."""
    amax = w.detach().abs().amax(dim=1).float()
    scale = torch.clamp(amax / 127.0, min=torch.finfo(torch.float32).eps)  # ONNX Runtime: -127..127
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def _fake_quant_input(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Asymmetric unsigned 8-bit with one scale per row of the batch (one sentence).

    ``mask`` (batch x tokens, 1 for a real token), when given for a batch x tokens x features input,
    restricts each row's min and max to its real tokens: the scale the sentence gets on its own.
    """
    xd = x.detach().float()
    if mask is not None and xd.dim() == 3 and tuple(mask.shape) == tuple(xd.shape[:2]):
        keep = mask.to(torch.bool).unsqueeze(-1)
        lo = xd.masked_fill(~keep, float("inf")).amin(dim=(1, 2))
        hi = xd.masked_fill(~keep, float("-inf")).amax(dim=(1, 2))
    else:
        rows = xd.reshape(x.shape[0], -1)
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / _ACT_QMAX, min=torch.finfo(torch.float32).eps)
    zero = torch.clamp(torch.round(-lo / scale), 0, _ACT_QMAX).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zero, 0, 0, _ACT_QMAX)


class FakeQuantLinear(nn.Module):
    """An ``nn.Linear`` whose forward pass rounds its input and weight as dynamic int8 will.

    It holds the original module (``.linear``), so its parameters are the original parameters.
    In eval mode it reads the token mask that :func:`fake_quantized` records from the model's call
    (``tokens``, a one-item list shared by the model's wrappers), so padding does not move a
    sentence's input scale.

    Example:
        >>> lin = nn.Linear(8, 4)
        >>> x = torch.randn(3, 5, 8)
        >>> y = FakeQuantLinear(lin)(x)
        >>> y.shape, bool((y - lin(x)).abs().max() < 0.1)
        (torch.Size([3, 5, 4]), True)
    """

    def __init__(self, linear: nn.Linear, tokens: list[torch.Tensor | None] | None = None) -> None:
        super().__init__()
        self.linear = linear
        self._tokens = tokens if tokens is not None else [None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        # a Linear masked by torch.nn.utils.prune (unstructured policies) recomputes its weight as
        # weight_orig * weight_mask in a forward pre-hook, which calling F.linear here bypasses
        w = lin.weight_orig * lin.weight_mask if hasattr(lin, "weight_mask") else lin.weight
        mask = None if self.training else self._tokens[0]
        return F.linear(_fake_quant_input(x, mask), _fake_quant_weight(w), lin.bias)


@contextmanager
def fake_quantized(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``nn.Linear`` of ``model`` computes with int8 rounding (straight-through
    gradients); on exit the original modules are back in place, holding the trained weights.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> with fake_quantized(model):
        ...     has_fake_quant(model)
        True
        >>> has_fake_quant(model), type(model[0]).__name__
        (False, 'Linear')
    """
    tokens: list[torch.Tensor | None] = [None]

    def record_mask(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        # the attention mask of this call (HF models take it by keyword or second positionally)
        tokens[0] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, FakeQuantLinear(child, tokens).train(child.training))
                swapped.append((parent, name, child))
    handle = model.register_forward_pre_hook(record_mask, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()
        for parent, name, child in swapped:
            setattr(parent, name, child)


def has_fake_quant(model: nn.Module) -> bool:
    """Whether ``model`` is inside :func:`fake_quantized` (it then scores like an int8 model)."""
    return any(isinstance(m, FakeQuantLinear) for m in model.modules())


# ----------------------------------------------------------------------------- ONNX Runtime int8
def quantize_onnx_int8(src: str | Path, dst: str | Path, *, per_channel: bool = True) -> Path:
    """ONNX Runtime dynamic int8 of a float ONNX model: every MatMul/Gemm weight int8 with one scale
    per output channel (``per_channel``; else one per tensor), activations quantized to uint8 on the fly.

    Measured on the dense MiniLM-L6 / SST-2 checkpoint (2026-12-01, 1 thread, 872 test sentences one at
    a time; float 0.8945): per-channel 0.8956 at 2.27x / 2.21x over float ONNX Runtime (batch 32 x 64 /
    1 x 64), per-tensor 0.8807 at 2.14x / 2.21x; static int8 (QDQ, calibrated on 128 training sentences)
    0.8842 at 1.63x / 2.02x, so static calibration is not offered. Pre-processing the float model
    (``quant_pre_process``) before per-tensor int8 did not help (0.8807, 1.98x / 2.24x).

    This is the int8 that survives export: the file runs in any ONNX Runtime (``MatMulInteger`` /
    ``DynamicQuantizeLinear`` ops).
    As with every dynamic int8, an activation's scale covers the whole batch, so a sentence's logits
    depend on the other rows of its batch; autoprune scores int8 models one sentence at a time.

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> torch.onnx.export(nn.Linear(8, 4), (torch.randn(2, 8),), f"{d}/f.onnx", dynamo=False)
        >>> quantize_onnx_int8(f"{d}/f.onnx", f"{d}/q.onnx").name
        'q.onnx'
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    quiet = logging.getLogger()  # the quantizer logs on the root logger: its advice to pre-process, skipped nodes
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    finally:
        quiet.setLevel(level)
    return dst


def is_onnx_int8(path: str | Path) -> bool:
    """Whether an ONNX file holds dynamically quantized MatMuls (written by :func:`quantize_onnx_int8`)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul") for n in graph.node)
