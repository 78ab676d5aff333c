"""ONNX export of a float pruned model, checked in ONNX Runtime, optionally as ONNX Runtime dynamic int8.

Used by ``autoprune export --onnx``, ``autoprune export-onnx``, the ``onnxruntime`` measurement
target (:mod:`autoprune.runtimes`) and int8 trials: :func:`onnx_int8_model` turns a float model into
an :class:`OnnxClassifier`, ONNX Runtime dynamic int8 called like the torch model. The exporter is
torch's TorchScript one (opset 17) with dynamic batch and sequence axes; the output is ``logits``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

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
    sess = onnx_session(onnx_path)
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


def onnx_session(path: str | Path, *, threads: int = 1, device: str = "cpu") -> Any:
    """An ONNX Runtime ``InferenceSession`` with ``threads`` intra-op threads (one inter-op thread,
    sequential execution, all graph optimisations) on ``device``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


class OnnxClassifier(nn.Module):
    """An exported ONNX sequence classifier run by ONNX Runtime, called like the torch model it came from:
    ``model(input_ids=..., attention_mask=..., token_type_ids=...)`` returns an object whose ``logits``
    is a float tensor, so :func:`autoprune.measure.evaluate_split` scores it unchanged (an int8 file one
    sentence at a time, :func:`autoprune.measure.eval_batch_size`).

    ``path``: the ONNX file; ``threads``: ONNX Runtime's intra-op threads; ``int8``: whether the file is
    dynamic int8 (read from it). It has no parameters; :func:`onnx_int8_model` builds an int8 one from a
    float torch model.
    """

    def __init__(self, path: str | Path, *, threads: int = 1, keep: Any = None) -> None:
        super().__init__()
        from autoprune.quantize import is_onnx_int8

        self.path = Path(path)
        self.threads = threads
        self.int8 = is_onnx_int8(self.path)
        self._session = onnx_session(self.path, threads=threads)
        self.inputs = [i.name for i in self._session.get_inputs()]
        self._keep = keep  # what must live as long as the session (the temporary folder of the file)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> SimpleNamespace:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feed = {n: given[n].cpu().numpy() for n in self.inputs}
        return SimpleNamespace(logits=torch.from_numpy(self._session.run(["logits"], feed)[0]))


def onnx_int8_model(model: nn.Module, *, threads: int = 1, out_dir: str | Path | None = None) -> OnnxClassifier:
    """Export the float ``model`` to ONNX, quantize it to ONNX Runtime dynamic int8 and return it as an
    :class:`OnnxClassifier` (:func:`onnx_model` with ``int8=True``).

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                  intermediate_size=32, num_labels=2)
        >>> q = onnx_int8_model(BertForSequenceClassification(cfg))
        >>> tuple(q(input_ids=torch.tensor([[5, 6, 7]])).logits.shape), is_int8(q)
        ((1, 2), True)
    """
    return onnx_model(model, int8=True, threads=threads, out_dir=out_dir)


def onnx_model(model: nn.Module, *, int8: bool = False, threads: int = 1,
               out_dir: str | Path | None = None) -> OnnxClassifier:
    """Export the float ``model`` to ONNX (checked against PyTorch), with ``int8`` quantized to ONNX
    Runtime dynamic int8, and return it as an :class:`OnnxClassifier` (the file in ``out_dir``, else in a
    temporary folder that lives as long as the returned model).

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                  intermediate_size=32, num_labels=2)
        >>> m = BertForSequenceClassification(cfg).eval()
        >>> f, ids = onnx_model(m), torch.tensor([[5, 6, 7]])
        >>> is_int8(f), torch.allclose(f(input_ids=ids).logits, m(input_ids=ids).logits, atol=1e-4)
        (False, True)
    """
    keep = None
    if out_dir is None:
        keep = tempfile.TemporaryDirectory(prefix="autoprune_onnx_")
        out_dir = keep.name
    was = model.training
    path = export_onnx(model.cpu().eval(), Path(out_dir) / ("model.int8.onnx" if int8 else "model.onnx"), int8=int8)
    model.train(was)
    return OnnxClassifier(path, threads=threads, keep=keep)


def is_int8(model: Any) -> bool:
    """Whether ``model`` is an int8 model (an int8 :class:`OnnxClassifier`), scored one sentence at a time."""
    return isinstance(model, OnnxClassifier) and model.int8
