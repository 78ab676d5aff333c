"""Layer reconstruction after structured pruning: re-fit what is kept so every layer reproduces the dense one.

After heads and FFN neurons are cut, :func:`reconstruct_layers` re-fits the two output projections
of every encoder layer (``LayerParts.attn_out`` over the kept heads, ``LayerParts.ffn_out`` over the
kept neurons), layer by layer from the bottom, on calibration activations, with no gradient step:

* each layer is fed the **pruned** model's own activations (its lower layers already re-fitted);
* the target of a sublayer is the dense model's pre-LayerNorm sum (dense sublayer output + dense
  residual) minus the pruned model's residual, so that ``LayerNorm(fit + pruned residual)`` is the
  dense LayerNorm's input: the fit also corrects the drift carried up from the layers below;
* padding tokens are left out (the batches' ``attention_mask``);
* each token's row is weighted by one over the variance of the dense sum at that token
  (``weighting="layernorm"``), the scale the LayerNorm divides that token by: the fit then
  minimises, to first order, the error of the LayerNorm's *output*, which is what the next
  sublayer reads. Unweighted (``uniform``), the few tokens with a large residual norm dominate;
* each projection is one ridge-regularised weighted linear least-squares problem, solved once in
  float64 from ``X^T W X`` and ``X^T W Y`` accumulated over the batches. The ridge pulls the weights
  towards the ones the cut left (not towards zero), with strength ``ridge * mean(diag(X^T W X))``; so
  the fitted sublayer's (weighted) calibration error is never above that of the weights as cut.

After an **unstructured** cut (``torch.nn.utils.prune`` masks on every projection) the same pass re-fits
every masked projection with its zeros fixed: the query/key/value and intermediate projections to their
own output before the cut (at the pruned model's inputs, SparseGPT's layer-wise objective), the output
projections to the dense sums as above. Each is the least-squares solution followed by
:func:`masked_update` (SparseGPT's fixed-mask update, Frantar & Alistarh 2023), which zeroes the masked
weights and moves what they carried into the kept ones; the mask is the policy's criterion's, not
re-chosen. On the 42 archived random policies of the reference space this lifted rung 0's rank
correlation with the full budget within the unstructured ones from +0.728 to +0.811
(``benchmarks/rung0_fidelity.py``, 2026-12-07).

The dense side does not depend on the policy: :meth:`DenseTargets.compute` runs the dense model
once and keeps its pre-LayerNorm sums at the calibration tokens; passing the same
:class:`DenseTargets` to :func:`reconstruct_layers` for many policies skips the dense forward.

Two ways to fit a projection (``method``), both from the same accumulated statistics:

* ``projection`` (the default): every weight and the bias of the projection over the kept units;
* ``scales``: one scale per kept unit (Kwon et al. 2022's mask tuning) and the bias, the weights
  otherwise as cut.

Why ``projection`` and ``layernorm`` (the defaults): measured on the fine-tuned MiniLM-L6 / SST-2
checkpoint with Fisher scores from 1,024 training sentences of 12+ tokens, ridge 1e-2, no retraining
(``benchmarks/retraining_free.py``, 2026-12-01), accuracy on the 1,496 validation sentences of 15+
words / on the 872 test sentences:

============================  ==================  ==================
fit                           50 % heads + FFN    75 % heads + FFN
============================  ==================  ==================
plain cut                     0.8991 / 0.8452     0.7226 / 0.7477
scales, uniform rows          0.8636 / 0.8245     0.7426 / 0.7351
scales, layernorm rows        0.9178 / 0.8589     0.8229 / 0.8108
projection, uniform rows      0.9332 / 0.8819     0.8676 / 0.8406
projection, layernorm rows    0.9378 / 0.8830     0.9084 / 0.8727
============================  ==================  ==================

A scale per unit has 6 or 768 degrees of freedom per projection where the full projection has
``hidden x kept``: it can re-mix what the cut units carried into the kept ones, and the correction
of the drift from the layers below needs exactly that. Weighting rows by the LayerNorm's scale
matters most at 75 %: MiniLM's FFN sums at ``[CLS]`` have up to ~200 times the median token's
variance (the top 2 % of tokens hold 14-24 % of the sum of squares), so an unweighted fit spends
itself on a few tokens whose LayerNorm then divides the error away.

Example:
    >>> import copy, torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from autoprune.surgery import prune_structured
    >>> _ = torch.manual_seed(0)
    >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
    ...                  intermediate_size=32)
    >>> dense = BertForSequenceClassification(cfg).eval()
    >>> pruned = prune_structured(copy.deepcopy(dense), [[0, 1], [2, 3]], [list(range(16))] * 2)
    >>> batches = [{"input_ids": torch.randint(1, 50, (8, 10))} for _ in range(4)]
    >>> targets = DenseTargets.compute(dense, batches)   # once per dense model and calibration set
    >>> records = reconstruct_layers(pruned, targets)
    >>> [r["ffn_error_after"] < r["ffn_error_before"] for r in records]
    [True, True]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import torch
import torch.nn as nn

from autoprune.errors import PolicyError

logger = logging.getLogger(__name__)

Method = Literal["projection", "scales"]
METHODS: tuple[str, ...] = ("projection", "scales")
Weighting = Literal["layernorm", "uniform"]
WEIGHTINGS: tuple[str, ...] = ("layernorm", "uniform")
DEFAULT_RIDGE = 1e-2


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what it needed was captured."""


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return (mask > 0) if mask is not None else torch.ones(ids.shape, dtype=torch.bool, device=ids.device)


def _post_ln_parts(model: nn.Module) -> list[Any]:
    from autoprune.models import get_adapter

    layers = get_adapter(model).layers(model)
    for i, p in enumerate(layers):
        if p.attn_norm is None or p.ffn_norm is None:
            raise PolicyError(f"layer {i}: reconstruction fits the input of a post-LayerNorm block and this "
                              f"architecture's adapter names no attn_norm / ffn_norm; use reconstruct: none")
    return layers


@dataclass
class DenseTargets:
    """The dense model's pre-LayerNorm sums on calibration batches, computed once, reused across policies.

    ``attn_sums[j][b]`` / ``ffn_sums[j][b]``: dense layer ``j``'s LayerNorm input after the attention /
    FFN sublayer on batch ``b``, at that batch's real tokens (``token_masks[b]``): ``[tokens, hidden]``.
    The fit's token weights and the relative errors' denominators are derived from them once, on
    first use.
    """

    batches: list[dict[str, torch.Tensor]]
    token_masks: list[torch.Tensor]
    attn_sums: list[list[torch.Tensor]]
    ffn_sums: list[list[torch.Tensor]]
    seconds: float = 0.0
    _weights: dict[tuple[str, int, str], list[torch.Tensor | None]] = field(default_factory=dict, repr=False)
    _spread: dict[tuple[str, int, str], float] = field(default_factory=dict, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.attn_sums)

    @property
    def tokens(self) -> int:
        return int(sum(int(m.sum()) for m in self.token_masks))

    def rows(self, sublayer: str, layer: int, batch: int) -> torch.Tensor:
        """Dense layer ``layer``'s LayerNorm input after ``sublayer`` (attn / ffn) at batch ``batch``'s real tokens."""
        return (self.attn_sums if sublayer == "attn" else self.ffn_sums)[layer][batch]

    def weights(self, sublayer: str, layer: int, batch: int, weighting: str) -> torch.Tensor | None:
        """The fit's token weights at those rows (:func:`token_weights`; None: uniform)."""
        key = (sublayer, layer, weighting)
        if key not in self._weights:
            self._weights[key] = [token_weights(self.rows(sublayer, layer, b), weighting)
                                  for b in range(len(self.batches))]
        return self._weights[key][batch]

    def spread(self, sublayer: str, layer: int, weighting: str = "uniform") -> float:
        """``sum_t w_t |S_t - mean_w(S)|^2`` over the calibration tokens ``t`` of the dense sums ``S``, with
        the fit's token weights ``w`` (the denominator of the relative errors)."""
        key = (sublayer, layer, weighting)
        if key not in self._spread:
            total = wsum = 0.0
            first = torch.zeros(self.attn_sums[layer][0].shape[-1], dtype=torch.float64)
            for b in range(len(self.batches)):
                r = self.rows(sublayer, layer, b).double()
                w = self.weights(sublayer, layer, b, weighting)
                w = torch.ones(r.shape[0], dtype=torch.float64) if w is None else w.double()
                total += float((w[:, None] * r.pow(2)).sum())
                first += (w[:, None] * r).sum(0)
                wsum += float(w.sum())
            self._spread[key] = max(total - float(first.pow(2).sum()) / max(wsum, 1e-30), 1e-30)
        return self._spread[key]

    @classmethod
    @torch.inference_mode()
    def compute(cls, dense: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> "DenseTargets":
        """Run ``dense`` over ``batches`` once (eval mode) and keep its pre-LayerNorm sums."""
        t0 = time.perf_counter()
        layers = _post_ln_parts(dense)
        kept = [_model_inputs(b) for b in batches]
        if not kept:
            raise PolicyError("reconstruction needs at least one calibration batch")
        attn: list[list[torch.Tensor]] = [[] for _ in layers]
        ffn: list[list[torch.Tensor]] = [[] for _ in layers]

        current: dict[str, torch.Tensor] = {}

        def sink(store: list[list[torch.Tensor]], j: int):
            def hook(module: nn.Module, args: tuple) -> None:
                store[j].append(args[0][current["mask"]].float().clone())
            return hook

        handles = []
        for j, p in enumerate(layers):
            handles.append(p.attn_norm.register_forward_pre_hook(sink(attn, j)))
            handles.append(p.ffn_norm.register_forward_pre_hook(sink(ffn, j)))
        was = dense.training
        dense.eval()
        try:
            for b in kept:
                current["mask"] = _token_mask(b)
                dense(**b)
        finally:
            for h in handles:
                h.remove()
            dense.train(was)
        out = cls(batches=kept, token_masks=[_token_mask(b) for b in kept], attn_sums=attn, ffn_sums=ffn,
                  seconds=time.perf_counter() - t0)
        logger.info("dense targets: %d layers, %d batches, %d tokens in %.1f s", out.num_layers, len(kept),
                    out.tokens, out.seconds)
        return out


@dataclass
class _Stats:
    """Least-squares statistics of ``Y ~ X W^T + b`` over tokens, accumulated in float64."""

    k: int
    out: int
    xtx: torch.Tensor = field(init=False)
    xty: torch.Tensor = field(init=False)
    sx: torch.Tensor = field(init=False)
    sy: torch.Tensor = field(init=False)
    n: float = 0.0

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.k, self.k, dtype=torch.float64)
        self.xty = torch.zeros(self.k, self.out, dtype=torch.float64)
        self.sx = torch.zeros(self.k, dtype=torch.float64)
        self.sy = torch.zeros(self.out, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor | None = None) -> None:
        """One batch of rows (``x``: ``[n, k]``, ``y``: ``[n, out]`` or None for a fit to the projection's
        own output, optional row weights ``[n]``); products in float32, sums in float64."""
        x = x.float()
        xw = x if weight is None else x * weight.float()[:, None]
        self.xtx += (xw.T @ x).double()
        self.sx += xw.sum(0).double()
        self.n += float(x.shape[0]) if weight is None else float(weight.double().sum())
        if y is not None:
            y = y.float()
            self.xty += (xw.T @ y).double()
            self.sy += (y if weight is None else y * weight.float()[:, None]).sum(0).double()

    def _strength(self, ridge: float, diag: torch.Tensor) -> float:
        return float(ridge) * float(diag.mean()) if diag.numel() else 0.0

    def gram(self, *, ridge: float, bias: bool) -> torch.Tensor:
        """``X^T X + lam I`` (``lam``: ``ridge`` times its mean diagonal), bordered by ``sum X`` and the
        row count when the fit has a bias (the bias as a last, unpenalised column)."""
        k = self.k
        lam = self._strength(ridge, torch.diagonal(self.xtx))
        g = torch.zeros(k + bias, k + bias, dtype=torch.float64)
        g[:k, :k] = self.xtx + lam * torch.eye(k, dtype=torch.float64)
        if bias:
            g[:k, k] = self.sx
            g[k, :k] = self.sx
            g[k, k] = float(self.n)
        return g

    def solve_projection(self, w0: torch.Tensor, b0: torch.Tensor | None, *, ridge: float,
                         mask: torch.Tensor | None = None, own: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weights ``[out, k]`` and bias minimising ``|X W^T + b - Y|^2 + lam |W - w0|^2`` (bias unpenalised).

        ``own``: the target ``Y`` is the projection's own output ``X w0^T + b0`` (not accumulated), whose
        minimiser is ``w0, b0`` itself. With a 0/1 ``mask`` (``[out, k]``, 0: the weight stays zero) the
        minimiser over the masked weights is approximated by :func:`masked_update` from the unconstrained
        one: the objective is ``(W - W*) g (W - W*)^T`` plus a constant, so the masked problem is
        SparseGPT's with Hessian ``g``.
        """
        k = self.k
        g = self.gram(ridge=ridge, bias=b0 is not None)
        w0d = w0.detach().double().cpu()
        if own:
            sol = w0d if b0 is None else torch.cat([w0d, b0.detach().double().cpu()[:, None]], 1)
        else:
            rhs = torch.zeros(g.shape[0], self.out, dtype=torch.float64)
            rhs[:k] = self.xty + self._strength(ridge, torch.diagonal(self.xtx)) * w0d.T
            if b0 is not None:
                rhs[k] = self.sy
            sol = _spd_solve(g, rhs).T  # [out, k (+1)]
        if mask is not None:
            keep = torch.ones_like(sol, dtype=torch.bool)
            keep[:, :k] = mask.detach().cpu() > 0
            sol = masked_update(sol, g, keep)
        return sol[:, :k].float(), (sol[:, k].float() if b0 is not None else None)

    def solve_scales(self, w0: torch.Tensor, b0: torch.Tensor | None, *, width: int,
                     ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One scale ``s_u`` per unit of ``width`` input columns (and the bias, unpenalised), minimising
        ``|sum_u s_u X_u W_u^T + b - Y|^2 + lam |s - 1|^2``; returns the weights ``w0 * s`` (per column
        block) and the bias. Unit ``u``'s contribution at a token is ``C_u = X_u W_u^T``, so the normal
        equations need only ``X^T X``, ``X^T Y`` and ``sum X``: ``C_u . C_v`` summed over tokens is the
        block sum of ``X^T X * (W^T W)``."""
        w = w0.detach().double().cpu()
        units = self.k // width
        gram = (self.xtx * (w.T @ w)).view(units, width, units, width).sum(dim=(1, 3))
        rhs = (self.xty * w.T).sum(1).view(units, width).sum(1)
        lam = self._strength(ridge, torch.diagonal(gram))
        g = gram + lam * torch.eye(units, dtype=torch.float64)
        r = rhs + lam
        if b0 is None or self.n == 0:
            s = _spd_solve(g, r[:, None])[:, 0]
            return (w * s.repeat_interleave(width)[None, :]).float(), None
        # the bias eliminated: b = (sum Y - sum_u s_u sum C_u) / n
        col = (w * self.sx[None, :]).view(w.shape[0], units, width).sum(2)  # sum over tokens of C_u: [out, units]
        s = _spd_solve(g - col.T @ col / self.n, (r - col.T @ self.sy / self.n)[:, None])[:, 0]
        b = (self.sy - col @ s) / self.n
        return (w * s.repeat_interleave(width)[None, :]).float(), b.float()


def masked_update(w: torch.Tensor, g: torch.Tensor, keep: torch.Tensor, *, block: int = 128) -> torch.Tensor:
    """Zero the weights ``keep`` leaves out of ``w`` (``[out, k]``) and move what they carried into the
    kept ones to its right, so that ``(W - w) g (W - w)^T`` stays small for every row: SparseGPT's
    fixed-mask update (Frantar & Alistarh 2023, Algorithm 1 with the mask given), one column at a time
    through the upper Cholesky factor of ``g^-1``, with lazy updates by blocks of ``block`` columns.
    A column that is always kept (a bias as the last column) takes the rest of the error.

    Example (a column the input does not excite is free to drop; the others absorb nothing):
        >>> g = torch.diag(torch.tensor([1.0, 1.0, 1e-12], dtype=torch.float64)) + 1e-9 * torch.eye(3)
        >>> w = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
        >>> masked_update(w, g, torch.tensor([[True, True, False]])).round(decimals=4)
        tensor([[1., 2., 0.]], dtype=torch.float64)
    """
    w = w.detach().double().clone()
    k = w.shape[1]
    chol, info = torch.linalg.cholesky_ex(g)
    if int(info) != 0:  # singular: a little damping on the diagonal
        chol = torch.linalg.cholesky(g + 1e-8 * float(torch.diagonal(g).mean()) * torch.eye(k, dtype=g.dtype))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    kept = keep.to(w.dtype)
    dropped = 1.0 - kept
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            e = w1[:, i] * dropped[:, i1 + i] / h1[i, i]
            w1[:, i:].sub_(torch.outer(e, h1[i, i:]))
            w1[:, i].mul_(kept[:, i1 + i])  # exactly zero where dropped
            err[:, i] = e
        w[:, i1:i2] = w1
        if i2 < k:
            w[:, i2:] -= err @ hinv[i1:i2, i2:]
    return w


def _spd_solve(g: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``g x = rhs`` for a symmetric positive semi-definite ``g`` (Cholesky; least squares if singular)."""
    chol, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(g, rhs, driver="gelsd").solution


def _block_call_capture(block: nn.Module) -> tuple[dict[str, Any], Any]:
    """A pre-hook on the first encoder layer that records how the encoder calls its layers."""
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            seen["hidden"], seen["args"] = args[0], tuple(args[1:])
        else:
            seen["hidden"], seen["args"] = kwargs.pop("hidden_states"), ()
        seen["kwargs"] = dict(kwargs)
        raise _Stop

    return seen, block.register_forward_pre_hook(hook, with_kwargs=True)


class _Capture:
    """Forward hooks on one layer's projections and LayerNorms; :meth:`run` calls the block and keeps
    their inputs / outputs, optionally ending the call at a LayerNorm's input."""

    def __init__(self, parts: Any) -> None:
        self.stop_at: str | None = None
        self.got: dict[str, torch.Tensor] = {}
        p = parts
        self.handles = [
            p.attn_out.register_forward_pre_hook(self._pre("attn_x")),
            p.attn_out.register_forward_hook(self._post("attn_o")),
            p.attn_norm.register_forward_pre_hook(self._pre("attn_s", stop="attn")),
            p.ffn_out.register_forward_pre_hook(self._pre("ffn_x")),
            p.ffn_out.register_forward_hook(self._post("ffn_o")),
            p.ffn_norm.register_forward_pre_hook(self._pre("ffn_s", stop="ffn")),
        ]

    def _pre(self, key: str, stop: str | None = None):
        def hook(module: nn.Module, args: tuple) -> None:
            self.got[key] = args[0]
            if stop is not None and stop == self.stop_at:
                raise _Stop
        return hook

    def _post(self, key: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.got[key] = output
        return hook

    def run(self, block: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict],
            stop_at: str | None) -> torch.Tensor | None:
        self.stop_at, self.got = stop_at, {}
        try:
            out = block(hidden, *call[0], **call[1])
        except _Stop:
            return None
        return out[0] if isinstance(out, tuple) else out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _sq(a: torch.Tensor, w: torch.Tensor | None) -> float:
    per_row = a.float().pow(2).sum(1).double()
    return float(per_row.sum() if w is None else (w.double() * per_row).sum())


def _mask(linear: nn.Linear) -> torch.Tensor | None:
    """The ``torch.nn.utils.prune`` mask of an unstructured-pruned Linear (None: not masked)."""
    return getattr(linear, "weight_mask", None)


def _fit(linear: nn.Linear, stats: _Stats, *, method: Method, width: int, ridge: float) -> None:
    """Write the fitted weights and bias; a masked Linear (unstructured pruning) gets the fixed-mask fit
    (its zeros stay zeros) in ``weight_orig``, which its mask multiplies at every call."""
    mask = _mask(linear)
    with torch.no_grad():
        if mask is not None:
            w, b = stats.solve_projection(linear.weight, linear.bias, ridge=ridge, mask=mask)
        elif method == "projection":
            w, b = stats.solve_projection(linear.weight, linear.bias, ridge=ridge)
        else:
            w, b = stats.solve_scales(linear.weight, linear.bias, width=width, ridge=ridge)
        param = linear.weight_orig if mask is not None else linear.weight
        param.copy_(w.to(param))
        if b is not None:
            linear.bias.copy_(b.to(linear.bias))


def _refit_inputs(parts: Any, sublayer: str, cap: "_Capture", hidden: list[torch.Tensor],
                  calls: list[tuple[tuple, dict]], masks: list[torch.Tensor], ridge: float) -> None:
    """Unstructured pruning: the masked projections that feed ``sublayer``'s output projection (query /
    key / value for ``attn``, the intermediate projection for ``ffn``) re-fitted, zeros fixed, to their
    own output before the cut at the pruned model's inputs (SparseGPT's layer-wise objective).
    Projections called on the same input (query, key and value) share its statistics and are updated
    as one stacked matrix (the update is row by row)."""
    slices = parts.head_slices if sublayer == "attn" else parts.neuron_slices
    out_proj = parts.attn_out if sublayer == "attn" else parts.ffn_out
    linears = {id(s.linear): s.linear for s in slices if s.linear is not out_proj and _mask(s.linear) is not None}
    if not linears:
        return
    groups: dict[int, list[nn.Linear]] = {}  # the first linear to read an input -> every linear reading it
    stats: dict[int, _Stats] = {}
    current: dict[str, Any] = {}

    def gram(key: int, lin: nn.Linear):
        def hook(module: nn.Module, args: tuple) -> None:
            first = current["inputs"].setdefault(args[0].data_ptr(), key)
            if current["batch"] == 0:
                groups.setdefault(first, []).append(lin)
            if first == key:
                stats.setdefault(key, _Stats(lin.in_features, lin.out_features)).add(args[0][current["mask"]], None)
        return hook

    handles = [lin.register_forward_pre_hook(gram(key, lin)) for key, lin in linears.items()]
    try:
        for bi, m in enumerate(masks):
            current.update(mask=m, batch=bi, inputs={})
            cap.run(parts.block, hidden[bi], calls[bi], stop_at=sublayer)
    finally:
        for h in handles:
            h.remove()
    for key, group in groups.items():
        with torch.no_grad():
            bias = [lin.bias for lin in group]
            w, b = stats[key].solve_projection(
                torch.cat([lin.weight_orig for lin in group]),
                None if any(x is None for x in bias) else torch.cat(bias), ridge=ridge,
                mask=torch.cat([lin.weight_mask for lin in group]), own=True)
            row = 0
            for lin in group:
                n = lin.out_features
                lin.weight_orig.copy_(w[row:row + n].to(lin.weight_orig))
                if b is not None:
                    lin.bias.copy_(b[row:row + n].to(lin.bias))
                row += n


def token_weights(target: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """Row weights of a fit whose target rows (tokens) are ``target`` (``[tokens, hidden]``): None for
    ``uniform``; for ``layernorm`` one over each dense row's variance across the hidden size, the
    scale its LayerNorm divides by, so the weighted squared error of a sum is (to first order) the
    squared error of its LayerNorm's output."""
    if weighting == "uniform":
        return None
    if weighting == "layernorm":
        return 1.0 / (target.float().var(dim=1, unbiased=False) + 1e-6)
    raise PolicyError(f"unknown reconstruction weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")


def _first_layer_inputs(pruned: nn.Module, block: nn.Module,
                        batches: list[dict[str, torch.Tensor]]) -> tuple[list[torch.Tensor], list[tuple[tuple, dict]]]:
    """Per batch, the first encoder layer's input and the other arguments the encoder calls its layers with."""
    seen, handle = _block_call_capture(block)
    hidden: list[torch.Tensor] = []
    calls: list[tuple[tuple, dict]] = []
    try:
        for b in batches:
            try:
                pruned(**b)
            except _Stop:
                pass
            hidden.append(seen["hidden"])
            calls.append((seen["args"], seen["kwargs"]))
    finally:
        handle.remove()
    return hidden, calls


@torch.inference_mode()
def reconstruct_layers(pruned: nn.Module, dense: nn.Module | DenseTargets,
                       batches: Iterable[dict[str, torch.Tensor]] | None = None, *,
                       layer_map: Sequence[int] | None = None, ridge: float = DEFAULT_RIDGE,
                       method: Method = "projection", weighting: Weighting = "layernorm") -> list[dict[str, float]]:
    """Re-fit the output projections of ``pruned`` (in place) so each layer reproduces ``dense``'s.

    ``dense`` is the dense model (then ``batches`` are the calibration batches) or a
    :class:`DenseTargets` computed from it once (then its own batches are used and ``batches``
    must be None). ``layer_map[i]`` is the index in the dense model of the pruned model's layer
    ``i`` (default: the same index; give it when whole layers were dropped).

    Returns one record per pruned layer: ``layer``, ``dense_layer``, ``tokens`` and the relative
    calibration error of each fitted sum before and after its fit, ``attn_error_before`` /
    ``attn_error_after`` / ``ffn_error_before`` / ``ffn_error_after``: ``|S - S_dense|^2 /
    |S_dense - mean(S_dense)|^2`` over the calibration tokens, where ``S`` is the pruned layer's
    LayerNorm input (``before``: with the weights as cut, at the inputs the re-fitted layers below
    give it; ``ffn_error_before`` already after the attention fit of the same layer).
    """
    if method not in METHODS:
        raise PolicyError(f"unknown reconstruction method '{method}'; choose one of {', '.join(METHODS)}")
    if ridge < 0:
        raise PolicyError(f"reconstruction ridge must be >= 0, got {ridge}")
    if weighting not in WEIGHTINGS:
        raise PolicyError(f"unknown reconstruction weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")
    if isinstance(dense, DenseTargets):
        if batches is not None:
            raise PolicyError("reconstruct_layers: give calibration batches or DenseTargets, not both "
                              "(the targets were computed on their own batches)")
        targets = dense
    else:
        if batches is None:
            raise PolicyError("reconstruct_layers needs calibration batches to run the dense model on")
        targets = DenseTargets.compute(dense, batches)
    t0 = time.perf_counter()
    layers = _post_ln_parts(pruned)
    lmap = list(range(len(layers))) if layer_map is None else [int(j) for j in layer_map]
    if len(lmap) != len(layers) or any(not 0 <= j < targets.num_layers for j in lmap):
        raise PolicyError(f"layer_map {lmap} must give, for each of the pruned model's {len(layers)} layers, "
                          f"a layer index of the dense model in [0, {targets.num_layers})")
    was = pruned.training
    pruned.eval()
    records: list[dict[str, float]] = []
    try:
        hidden, calls = _first_layer_inputs(pruned, layers[0].block, targets.batches)
        direct: bool | None = None  # whether the block's output is ffn_norm(its input): checked once
        for i, parts in enumerate(layers):
            j = lmap[i]
            masks = targets.token_masks
            rec: dict[str, float] = {"layer": i, "dense_layer": j, "tokens": targets.tokens}
            cap = _Capture(parts)
            try:
                # attention: fit attn_out so that attn_out(x) + pruned residual = dense sum
                _refit_inputs(parts, "attn", cap, hidden, calls, masks, ridge)
                stats = _Stats(parts.num_heads * parts.head_dim, parts.attn_out.out_features)
                err = 0.0
                for bi, m in enumerate(masks):
                    cap.run(parts.block, hidden[bi], calls[bi], stop_at="attn")
                    g, target = cap.got, targets.rows("attn", j, bi)
                    w = targets.weights("attn", j, bi, weighting)
                    s = g["attn_s"][m]
                    stats.add(g["attn_x"][m], target - (s - g["attn_o"][m]), w)
                    err += _sq(s - target, w)
                rec["attn_error_before"] = err / targets.spread("attn", j, weighting)
                _fit(parts.attn_out, stats, method=method, width=parts.head_dim, ridge=ridge)
                # FFN: the same at the re-fitted attention's output
                _refit_inputs(parts, "ffn", cap, hidden, calls, masks, ridge)
                stats = _Stats(parts.num_neurons, parts.ffn_out.out_features)
                err = err_attn = 0.0
                kept: list[tuple[torch.Tensor, torch.Tensor]] = []
                for bi, m in enumerate(masks):
                    cap.run(parts.block, hidden[bi], calls[bi], stop_at="ffn")
                    g, target = cap.got, targets.rows("ffn", j, bi)
                    w = targets.weights("ffn", j, bi, weighting)
                    residual = g["ffn_s"] - g["ffn_o"]
                    kept.append((g["ffn_x"], residual))
                    stats.add(g["ffn_x"][m], target - residual[m], w)
                    err += _sq(g["ffn_s"][m] - target, w)
                    err_attn += _sq(g["attn_s"][m] - targets.rows("attn", j, bi),
                                    targets.weights("attn", j, bi, weighting))
                rec["attn_error_after"] = err_attn / targets.spread("attn", j, weighting)
                rec["ffn_error_before"] = err / targets.spread("ffn", j, weighting)
                _fit(parts.ffn_out, stats, method=method, width=1, ridge=ridge)
                # the layer's output, from what was kept: ffn_norm(ffn_out(x) + residual)
                cap.stop_at = None
                if direct is None:
                    full = cap.run(parts.block, hidden[0], calls[0], stop_at=None)
                    mine = parts.ffn_norm(parts.ffn_out(kept[0][0]) + kept[0][1])
                    direct = full is not None and full.shape == mine.shape and torch.allclose(
                        full, mine, rtol=1e-4, atol=1e-5)
                    if not direct:
                        logger.info("reconstruction: the layer output is not ffn_norm(ffn_out(x) + residual) "
                                    "here; running every block a third time")
                err = 0.0
                for bi, m in enumerate(masks):
                    x, residual = kept[bi]
                    if direct:
                        s = parts.ffn_out(x) + residual
                        hidden[bi] = parts.ffn_norm(s)
                    else:
                        hidden[bi] = cap.run(parts.block, hidden[bi], calls[bi], stop_at=None)
                        s = cap.got["ffn_s"]
                    err += _sq(s[m] - targets.rows("ffn", j, bi), targets.weights("ffn", j, bi, weighting))
                rec["ffn_error_after"] = err / targets.spread("ffn", j, weighting)
            finally:
                cap.remove()
            logger.debug("layer %d: attention error %.4f -> %.4f, FFN error %.4f -> %.4f", i,
                         rec["attn_error_before"], rec["attn_error_after"], rec["ffn_error_before"],
                         rec["ffn_error_after"])
            records.append(rec)
    finally:
        pruned.train(was)
    logger.info("reconstructed %d layers (%s, ridge %g) in %.1f s", len(layers), method, ridge,
                time.perf_counter() - t0)
    return records
