"""ONNX export of a float pruned model, checked in ONNX Runtime, optionally as ONNX Runtime dynamic int8.

Used by ``autoprune export --onnx``, ``autoprune export-onnx`` and the ``onnxruntime`` measurement
target (:mod:`autoprune.runtimes`). The exporter is torch's TorchScript one (opset 17) with dynamic
batch and sequence axes; the output is ``logits``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError

logger = logging.getLogger(__name__)


class OnnxExportError(AutopruneError):
    """The model cannot be exported to ONNX, or the exported file does not match PyTorch."""


def onnx_inputs(model: Any, seq_len: int = 16, batch: int = 2) -> tuple[dict[str, Any], list[str]]:
    """A random batch for ``model`` (last row half padding) and the names of the inputs its forward takes."""
    import inspect

    import torch

    vocab = int(getattr(model.config, "vocab_size", 100))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, seq_len // 2:] = 0
    names = ["input_ids", "attention_mask"]
    inputs = {"input_ids": ids, "attention_mask": mask}
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0):
        inputs["token_type_ids"] = torch.zeros_like(ids)
        names.append("token_type_ids")
    return inputs, names


def export_onnx(model: Any, out_path: str | Path, *, int8: bool = False, check: bool = True,
                atol: float = 1e-4) -> Path:
    """Export a float pruned model to ONNX (legacy TorchScript exporter, opset 17, dynamic batch/sequence).

    With ``check`` the ONNX model is run in onnxruntime on a fresh batch of another shape and its
    logits are compared with PyTorch's (``atol``). With ``int8`` the checked float ONNX model is then
    quantized by ONNX Runtime's dynamic int8 (:func:`autoprune.quantize.quantize_onnx_int8`) and the
    int8 file is written to ``out_path`` (checked to load and give finite logits of the right shape;
    its distance from the float logits is logged). Give the float model: a ``torch.ao`` dynamic int8
    model has no ONNX mapping and is refused.
    """
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        raise OnnxExportError("ONNX export of a torch.ao dynamically int8-quantized model is not supported (torch's "
                          "dynamic quantized Linear has no ONNX mapping); export the float model with int8=True "
                          "(autoprune export-onnx MODEL_DIR --int8), which quantizes the ONNX model in ONNX Runtime")
    out = Path(out_path)
    if not int8:
        return _export_float_onnx(model, out, check=check, atol=atol)
    import numpy as np

    from autoprune.quantize import quantize_onnx_int8

    with tempfile.TemporaryDirectory(dir=str(out.parent) if out.parent.is_dir() else None) as tmp:
        fp32 = _export_float_onnx(model, Path(tmp) / "float.onnx", check=check, atol=atol)
        quantize_onnx_int8(fp32, out)
    if check:
        got, ref = _onnx_vs_torch(model, out)
        if got.shape != ref.shape or not np.isfinite(got).all():
            raise OnnxExportError(f"int8 ONNX check failed: logits of shape {got.shape} (expected {ref.shape}) "
                              f"or not finite")
        logger.info("int8 ONNX model %s: max |logit - float PyTorch| %.3g", out, float(np.abs(got - ref).max()))
    return out


def _onnx_vs_torch(model: Any, onnx_path: Path) -> tuple[Any, Any]:
    """Logits of the ONNX model and of ``model`` on a fresh batch of another shape than the export's."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    test, names = onnx_inputs(model, seq_len=11, batch=3)
    got = sess.run(["logits"], {n: test[n].numpy() for n in names})[0]
    with torch.no_grad():
        ref = model(**test).logits.numpy()
    return got, ref


def _export_float_onnx(model: Any, out: Path, *, check: bool, atol: float) -> Path:
    import warnings

    import numpy as np
    import torch

    inputs, names = onnx_inputs(model)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    model.eval()

    class _Logits(torch.nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.m = m

        def forward(self, *args: Any) -> Any:
            return self.m(**dict(zip(names, args))).logits

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model).eval(), tuple(inputs[n] for n in names), str(out), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False,
                          do_constant_folding=True)
    model.eval()  # the exporter restores the wrapper's mode; keep the model in eval mode whatever happens
    if check:
        got, ref = _onnx_vs_torch(model, out)
        diff = float(np.abs(got - ref).max())
        if not diff <= atol:
            raise OnnxExportError(f"ONNX check failed: logits differ from PyTorch by {diff:.2e} (> {atol:g})")
        logger.info("ONNX model %s matches PyTorch (max |diff| %.2e)", out, diff)
    return out
