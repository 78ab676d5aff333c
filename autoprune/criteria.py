"""Importance criteria: small objects that score units; higher = more important.

Each criterion is registered once (:func:`register_criterion`) with its name, whether it needs gradients of
the task loss (and hence labelled calibration batches), and how it scores. Every list of criterion
names in autoprune (policy validation, search spaces, the dashboard, CLI help) is
:func:`criterion_names`.

Elementwise criteria map one weight tensor (and its gradient) to scores of the same shape; a
structured unit's score is the sum over every parameter it owns (the slices its adapter lists: a
head owns its q/k/v rows and bias entries and the same columns of the attention output; an FFN
neuron its intermediate row and bias entry and its output-projection column):

* ``l1``: ``|w|``; ``l2``: ``w**2`` (the same ranking as the L2 norm);
* ``gradient``: first-order Taylor ``|w * dL/dw|``, ``dL/dw`` summed over the calibration batches;
* ``random``: uniform noise per unit from a seeded generator, the control every criterion must beat.

``fisher`` scores units, not weights: the empirical Fisher information of a mask variable on each
head and FFN neuron (Michel et al. 2019; Kwon et al. 2022), ``sum_i (dL_i / dm)^2`` over the
calibration samples ``i``, each sample with its own gradient (:class:`Fisher`).

Example:
    >>> import torch
    >>> get_criterion("l1").weight_scores(torch.tensor([[1.0, -3.0]]), None)
    tensor([[1., 3.]])
    >>> get_criterion("gradient").needs_gradients
    True
    >>> get_criterion("fisher").scores_weights
    False
"""

from __future__ import annotations

from typing import ClassVar, Iterable

import torch
import torch.nn as nn

from autoprune.errors import PolicyError

Batches = Iterable[dict[str, torch.Tensor]]
UnitScores = tuple[list[torch.Tensor], list[torch.Tensor]]


class Criterion:
    """Base class: scores heads and FFN neurons (:meth:`unit_scores`) and single weights
    (:meth:`model_weight_scores`) by summing :meth:`weight_scores` over what each unit owns."""

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False  # needs labelled calibration batches
    scores_weights: ClassVar[bool] = True    # usable for unstructured (single-weight) pruning
    description: ClassVar[str] = ""

    def weight_scores(self, w: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """Elementwise scores of a weight tensor (same shape)."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, batches: Batches | None) -> None:
        """Work done once before scoring (the gradient criterion backpropagates here)."""
        if self.needs_gradients:
            if batches is None:
                raise PolicyError(f"the {self.name} criterion needs labelled calibration batches")
            accumulate_gradients(model, batches)

    def unit_scores(self, model: nn.Module, batches: Batches | None = None, *, seed: int = 0) -> UnitScores:
        """Per-layer scores of every attention head and every FFN neuron: ``(heads, neurons)``."""
        from autoprune.models import get_adapter

        self.prepare(model, batches)
        heads, neurons = [], []
        for parts in get_adapter(model).layers(model):
            heads.append(self._sum_slices(parts.head_slices, parts.head_dim, parts.num_heads))
            neurons.append(self._sum_slices(parts.neuron_slices, 1, parts.num_neurons))
        model.zero_grad(set_to_none=True)
        return heads, neurons

    def _sum_slices(self, slices: list, width: int, total: int) -> torch.Tensor:
        out = torch.zeros(total)
        for s in slices:
            lin = s.linear
            w = self.weight_scores(lin.weight.detach(), lin.weight.grad).float()
            along = w.sum(dim=1 - s.dim)
            if s.dim == 0 and lin.bias is not None:
                along = along + self.weight_scores(lin.bias.detach(), lin.bias.grad).float()
            out += s.unit_sums(along.cpu(), width=width, units_total=total)
        return out

    def model_weight_scores(self, model: nn.Module, batches: Batches | None = None, *,
                            seed: int = 0) -> dict[str, torch.Tensor]:
        """Elementwise scores of every prunable encoder weight, keyed by module name; weights
        already masked to zero by an earlier step score ``-inf`` so they stay pruned."""
        from autoprune.models import get_adapter

        if not self.scores_weights:
            raise PolicyError(f"the {self.name} criterion scores heads and FFN neurons only; for single weights "
                              f"(granularity: unstructured) choose one of {', '.join(weight_criterion_names())}")
        self.prepare(model, batches)
        names = {id(m): n for n, m in model.named_modules()}
        gen = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for parts in get_adapter(model).layers(model):
            for lin in parts.linears():
                grad = getattr(lin, "weight_orig", lin.weight).grad
                s = self._weights(lin.weight.detach(), grad, gen)
                mask = getattr(lin, "weight_mask", None)
                if mask is not None:
                    s = s.masked_fill(mask == 0, float("-inf"))
                out[names[id(lin)]] = s
        model.zero_grad(set_to_none=True)
        return out

    def _weights(self, w: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        return self.weight_scores(w, grad).float()


class L1(Criterion):
    name = "l1"
    description = "L1 norm of the unit's weights"

    def weight_scores(self, w: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return w.abs()


class L2(Criterion):
    name = "l2"
    description = "squared L2 norm of the unit's weights"

    def weight_scores(self, w: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return w.pow(2)


class Gradient(Criterion):
    name = "gradient"
    needs_gradients = True
    description = "first-order Taylor |w * dL/dw| over calibration batches"

    def weight_scores(self, w: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        if grad is None:
            raise PolicyError("the gradient criterion needs gradients: call accumulate_gradients() first")
        return (w * grad).abs()


class Random(Criterion):
    name = "random"
    description = "uniform noise (the control)"

    def unit_scores(self, model: nn.Module, batches: Batches | None = None, *, seed: int = 0) -> UnitScores:
        from autoprune.models import get_adapter

        gen = torch.Generator().manual_seed(seed)
        heads, neurons = [], []
        for p in get_adapter(model).layers(model):  # one generator, layer by layer: heads then neurons
            heads.append(torch.rand(p.num_heads, generator=gen))
            neurons.append(torch.rand(p.num_neurons, generator=gen))
        return heads, neurons

    def _weights(self, w: torch.Tensor, grad: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(w.shape, generator=gen, dtype=torch.float32).to(w.device)


class Fisher(Criterion):
    """Empirical Fisher information of unit masks: ``sum_i (dL_i / dm_u)^2`` over calibration samples ``i``.

    A mask variable ``m_u = 1`` multiplies each head's ``head_dim`` columns of the input of the
    attention output projection (``LayerParts.attn_out``) and each neuron's input column of the FFN
    output projection (``ffn_out``), set by forward pre-hooks. The mask has one row per sample
    (``[batch, units]``), so backpropagating the *sum* of the samples' losses leaves each sample's own
    gradient in its row (samples do not interact in an encoder); squaring before summing over samples
    is what makes it the Fisher information and not the squared gradient of the summed loss, which
    lets samples with opposite gradients cancel. Weights get no gradients (their ``requires_grad`` is
    switched off while scoring), which keeps the backward pass to what the masks need.
    """

    name = "fisher"
    needs_gradients = True
    scores_weights = False
    description = "empirical Fisher information of head / neuron masks (per-sample squared mask gradients)"

    def unit_scores(self, model: nn.Module, batches: Batches | None = None, *, seed: int = 0) -> UnitScores:
        from autoprune.models import get_adapter

        if batches is None:
            raise PolicyError(f"the {self.name} criterion needs labelled calibration batches")
        layers = get_adapter(model).layers(model)
        heads = [torch.zeros(p.num_heads, dtype=torch.float64) for p in layers]
        neurons = [torch.zeros(p.num_neurons, dtype=torch.float64) for p in layers]
        masks: list[torch.Tensor | None] = [None] * (2 * len(layers))
        handles = []
        for i, p in enumerate(layers):
            handles.append(p.attn_out.register_forward_pre_hook(_mask_hook(masks, 2 * i, p.num_heads, p.head_dim)))
            handles.append(p.ffn_out.register_forward_pre_hook(_mask_hook(masks, 2 * i + 1, p.num_neurons, 1)))
        params = [q for q in model.parameters() if q.requires_grad]
        was_training = model.training
        model.eval()
        try:
            for q in params:
                q.requires_grad_(False)
            with torch.enable_grad():
                for batch in batches:
                    out = model(**batch)
                    if getattr(out, "loss", None) is None:
                        raise PolicyError(f"the {self.name} criterion needs labelled calibration batches "
                                          f"(a batch without 'labels' gives no loss)")
                    # the model's loss is a mean over the batch: times the batch size, each sample's loss counts once
                    loss = out.loss * batch["labels"].shape[0]
                    grads = torch.autograd.grad(loss, masks)
                    for i in range(len(layers)):
                        heads[i] += grads[2 * i].double().pow(2).sum(0).cpu()
                        neurons[i] += grads[2 * i + 1].double().pow(2).sum(0).cpu()
        finally:
            for h in handles:
                h.remove()
            for q in params:
                q.requires_grad_(True)
            model.train(was_training)
        return [h.float() for h in heads], [n.float() for n in neurons]


def _mask_hook(masks: list[torch.Tensor | None], slot: int, units: int, width: int):
    """A forward pre-hook multiplying a projection's input by a fresh per-sample unit mask of ones."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        m = torch.ones(x.shape[0], units, dtype=x.dtype, device=x.device, requires_grad=True)
        masks[slot] = m
        scale = m.repeat_interleave(width, dim=1) if width > 1 else m
        return (x * scale.view(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]),) + tuple(args[1:])

    return hook


_REGISTRY: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    """Add a criterion to the registry under its ``name`` (a later registration replaces it)."""
    if not criterion.name:
        raise ValueError("a criterion needs a name")
    _REGISTRY[criterion.name] = criterion
    return criterion


for _c in (Random(), Gradient(), L1(), L2(), Fisher()):
    register_criterion(_c)


def criterion_names() -> tuple[str, ...]:
    """Names of every registered criterion, in registration order."""
    return tuple(_REGISTRY)


def weight_criterion_names() -> tuple[str, ...]:
    """Criteria that can score single weights (unstructured pruning)."""
    return tuple(n for n, c in _REGISTRY.items() if c.scores_weights)


def get_criterion(name: str) -> Criterion:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown criterion '{name}'; choose one of {', '.join(_REGISTRY)}") from None


def accumulate_gradients(model: nn.Module, batches: Batches) -> int:
    """Backpropagate the task loss over ``batches`` and leave the summed gradients in ``.grad``.

    Returns the number of batches used. Dropout is off (eval mode) so the scores are deterministic.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    n = 0
    device = next(model.parameters()).device  # the batches follow the model (cpu or a GPU)
    with torch.enable_grad():
        for batch in batches:
            model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()
            n += 1
    model.train(was_training)
    return n


def keep_top(scores: torch.Tensor, n_keep: int) -> list[int]:
    """Indices of the ``n_keep`` highest scores, sorted ascending (ties broken by lower index)."""
    n_keep = max(1, min(int(n_keep), scores.numel()))
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(order[:n_keep].tolist())


def n_removed(total: int, sparsity: float) -> int:
    """How many of ``total`` units a sparsity removes: ``round(sparsity * total)``, always keeping one."""
    return min(int(round(sparsity * total)), total - 1)
