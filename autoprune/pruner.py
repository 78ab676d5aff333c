"""Prune a model by a policy without training: score -> plan -> cut -> (reconstruct).

:func:`prune` is the one library call that prunes: it scores units with the policy's criterion
(:mod:`autoprune.criteria`), plans which heads, FFN neurons and whole layers go, cuts them with
:mod:`autoprune.surgery`, and, for ``reconstruct: least_squares``, re-fits each pruned layer to the
dense one (:func:`autoprune.reconstruct.reconstruct_layers`). It returns a :class:`PruneRecord`:
plain data saying what was kept, with indices into the *original* model, so the same cut can be
re-applied exactly (:func:`apply_record`) without scoring again.

Iterative schedules call :func:`prune` once per step with ``fraction=k/K`` and the previous
step's record (``previous=``); each call returns the record composed so far.

Example (a tiny random BERT; nothing is downloaded):
    >>> import torch
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from autoprune.policy import PruningPolicy
    >>> _ = torch.manual_seed(0)
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
    ...     num_attention_heads=4, intermediate_size=32)).eval()
    >>> policy = PruningPolicy(criterion="l1", head_sparsity=[0.5, 0.5, 1.0], ffn_sparsity=[0.25, 0.5, 0.5])
    >>> record = prune(model, policy)
    >>> record.heads_per_layer, record.ffn_per_layer, record.dropped_layers
    ([2, 2], [24, 16], [2])
    >>> len(record.kept_heads[0]), record.kept_heads[2]
    (2, [])
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from autoprune.criteria import get_criterion, keep_top, n_removed
from autoprune.errors import PolicyError
from autoprune.models import get_adapter
from autoprune.policy import PruningPolicy
from autoprune.surgery import drop_layers, prune_structured, prune_unstructured

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
TIMING_KEYS = ("scoring", "planning", "cut", "reconstruction")
_FULL = 1.0 - 1e-9  # a sparsity at or above this removes the whole layer


@dataclass
class PruneRecord:
    """What one pruning kept, as plain data (JSON via :meth:`to_dict` / :meth:`from_dict`).

    * ``kept_heads`` / ``kept_neurons``: per layer of the original model, the indices (into that
      original layer) of the heads / FFN neurons kept; ``[]`` for a dropped layer; ``None`` for
      unstructured pruning, which keeps every unit;
    * ``dropped_layers``: original indices of the encoder layers removed whole;
    * ``heads_per_layer`` / ``ffn_per_layer``: the shape after pruning (remaining layers only);
    * ``original_heads`` / ``original_ffn``: the shape before pruning (``None`` in records converted
      from older policy files, which did not say);
    * ``weight_sparsity``: unstructured pruning's masks summarised as the fraction of zero weights
      per remaining layer;
    * ``timings``: seconds spent scoring, planning, cutting and reconstructing (summed over steps);
    * ``steps``: how many :func:`prune` calls the record composes; ``reconstruction``: the
      per-layer report of the last reconstruction (errors before and after), if any.
    """

    criterion: str
    granularity: str
    kept_heads: list[list[int]] | None
    kept_neurons: list[list[int]] | None
    dropped_layers: list[int]
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    original_heads: list[int] | None = None
    original_ffn: list[int] | None = None
    weight_sparsity: list[float] | None = None
    timings: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in TIMING_KEYS})
    steps: int = 1
    reconstruction: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ derived
    @property
    def num_layers(self) -> int:
        """Encoder layers of the original model."""
        if self.original_heads is not None:
            return len(self.original_heads)
        for kept in (self.kept_heads, self.kept_neurons):
            if kept is not None:
                return len(kept)
        return len(self.heads_per_layer) + len(self.dropped_layers)

    def remaining_layers(self) -> list[int]:
        """Original indices of the layers the pruned model keeps, in order (its layer ``i`` is
        original layer ``remaining_layers()[i]``)."""
        dropped = set(self.dropped_layers)
        return [i for i in range(self.num_layers) if i not in dropped]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "prune record") -> "PruneRecord":
        """Rebuild a record from :meth:`to_dict`'s output; a malformed one raises :class:`PolicyError`."""
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: expected a mapping (a prune record), got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise PolicyError(f"{source}: unknown field(s) {', '.join(unknown)} in the prune record")
        try:
            rec = cls(**data)
        except TypeError as exc:
            raise PolicyError(f"{source}: incomplete prune record ({exc})") from None
        rec.validate(source)
        return rec

    @classmethod
    def from_kept(cls, kept_heads: list[list[int]] | None, kept_neurons: list[list[int]] | None, *,
                  criterion: str, source: str = "policy") -> "PruneRecord":
        """A record from the kept indices that older exported policy files stored under ``policy:``
        (no layer was dropped then; the shape before pruning was not recorded)."""
        rec = cls(criterion=criterion, granularity="structured", kept_heads=kept_heads, kept_neurons=kept_neurons,
                  dropped_layers=[], heads_per_layer=[len(x) for x in kept_heads or []],
                  ffn_per_layer=[len(x) for x in kept_neurons or []])
        rec.validate(source)
        return rec

    @classmethod
    def unpruned(cls, model: nn.Module, criterion: str = "", granularity: str = "structured") -> "PruneRecord":
        """The record of a model nothing was cut from (every unit of every layer kept), ``steps=0``."""
        heads, ffn = get_adapter(model).shape(model)
        structured = granularity == "structured"
        return cls(criterion=criterion, granularity=granularity,
                   kept_heads=[list(range(h)) for h in heads] if structured else None,
                   kept_neurons=[list(range(f)) for f in ffn] if structured else None,
                   dropped_layers=[], heads_per_layer=list(heads), ffn_per_layer=list(ffn),
                   original_heads=list(heads), original_ffn=list(ffn), steps=0)

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "prune record") -> None:
        """Check the record is self-consistent (distinct indices; exactly the dropped layers keep nothing)."""
        if self.granularity not in ("structured", "unstructured"):
            raise PolicyError(f"{source}: granularity '{self.granularity}' is not structured or unstructured")
        n = self.num_layers
        if any(not 0 <= i < n for i in self.dropped_layers) or len(set(self.dropped_layers)) != len(self.dropped_layers):
            raise PolicyError(f"{source}: 'dropped_layers' {self.dropped_layers} are not distinct indices in [0, {n})")
        for name in ("kept_heads", "kept_neurons"):
            kept = getattr(self, name)
            if kept is None:
                continue
            if len(kept) != n:
                raise PolicyError(f"{source}: '{name}' has {len(kept)} layers but the record describes {n}")
            for i, layer in enumerate(kept):
                if len(set(layer)) != len(layer) or any(j < 0 for j in layer):
                    raise PolicyError(f"{source}: '{name}' has duplicate or negative indices; the file is corrupt")
                if (not layer) != (i in self.dropped_layers):
                    raise PolicyError(f"{source}: '{name}[{i}]' keeps no unit but layer {i} is not dropped (or the "
                                      f"other way round); the file is corrupt")

    def check_model(self, heads: Sequence[int], ffn: Sequence[int], source: str = "prune record") -> None:
        """Raise :class:`PolicyError` unless the record can cut an unpruned model of this shape."""
        if len(heads) != self.num_layers:
            raise PolicyError(f"{source}: the record describes {self.num_layers} encoder layers but the model has "
                              f"{len(heads)}; the record does not match this model")
        for name, orig, now in (("original_heads", self.original_heads, heads), ("original_ffn", self.original_ffn, ffn)):
            if orig is not None and list(orig) != list(now):
                raise PolicyError(f"{source}: the record was made on a model with {name} {list(orig)}, this model has "
                                  f"{list(now)}; the record does not match this model")
        for name, kept, total in (("kept_heads", self.kept_heads, heads), ("kept_neurons", self.kept_neurons, ffn)):
            for i, layer in enumerate(kept or []):
                if layer and max(layer) >= total[i]:
                    raise PolicyError(f"{source}: '{name}[{i}]' indexes unit {max(layer)} but the model has {total[i]} "
                                      f"per layer; the policy does not match this model")


# ----------------------------------------------------------------------------- cutting
def _local(kept_now: Sequence[int], target: Sequence[int], what: str, layer: int) -> list[int]:
    pos = {u: i for i, u in enumerate(kept_now)}
    missing = [u for u in target if u not in pos]
    if missing:
        raise PolicyError(f"layer {layer}: the record keeps {what} {missing[:5]} that an earlier step already removed")
    return [pos[u] for u in target]


def _check_stands(model: nn.Module, previous: PruneRecord) -> None:
    heads, ffn = get_adapter(model).shape(model)
    if (heads, ffn) != (previous.heads_per_layer, previous.ffn_per_layer):
        raise PolicyError(f"the model has heads {heads} / FFN {ffn} per layer, not the shape of the previous record "
                          f"({previous.heads_per_layer} / {previous.ffn_per_layer}); pass the record of the model as "
                          f"it stands")


def apply_record(model: nn.Module, record: PruneRecord, *, previous: PruneRecord | None = None) -> nn.Module:
    """Cut ``model`` (in place) to the units ``record`` keeps, without scoring.

    ``previous`` describes the model as it stands (``None``: not pruned yet, and the record's
    original shape is checked against it). Dropped layers go first, then heads and neurons.
    Unstructured records keep every unit and hold no masks: they cut nothing.
    """
    if previous is None:
        record.check_model(*get_adapter(model).shape(model))
        previous = PruneRecord.unpruned(model, record.criterion)
    else:
        _check_stands(model, previous)
    if record.granularity != "structured":
        return model
    now = previous.remaining_layers()
    dropped = set(record.dropped_layers)
    drop_now = [li for li, j in enumerate(now) if j in dropped]
    keep = [j for j in now if j not in dropped]
    if drop_now:
        drop_layers(model, drop_now)
    local_h = None if record.kept_heads is None or previous.kept_heads is None else \
        [_local(previous.kept_heads[j], record.kept_heads[j], "heads", j) for j in keep]
    local_n = None if record.kept_neurons is None or previous.kept_neurons is None else \
        [_local(previous.kept_neurons[j], record.kept_neurons[j], "FFN neurons", j) for j in keep]
    prune_structured(model, local_h, local_n)
    return model


# ----------------------------------------------------------------------------- planning
def _sparsity(values: list[float] | None, i: int) -> float:
    return values[i] if values else 0.0


def _plan_structured(policy: PruningPolicy, fraction: float, previous: PruneRecord, first: bool,
                     head_scores: list[torch.Tensor], neuron_scores: list[torch.Tensor]) -> PruneRecord:
    """The composed record after this step: which original units and layers remain.

    ``head_scores`` / ``neuron_scores`` score the model as it stands (its layers are
    ``previous.remaining_layers()``); how many units a layer keeps is counted on the original layer.
    """
    now = previous.remaining_layers()
    orig_h, orig_f = previous.original_heads or [], previous.original_ffn or []
    dropped = set(previous.dropped_layers)
    dropped |= {j for j in now if fraction * max(_sparsity(policy.head_sparsity, j),
                                                 _sparsity(policy.ffn_sparsity, j)) >= _FULL}
    if first and policy.drop_layers:
        dropped |= set(policy.drop_layers)
    elif first and policy.drop_layer_count:
        block = {j: float(head_scores[li].sum() + neuron_scores[li].sum()) for li, j in enumerate(now)
                 if j not in dropped}
        dropped |= set(sorted(block, key=lambda j: (block[j], j))[:policy.drop_layer_count])  # least important
    if len(dropped) >= len(orig_h):
        raise PolicyError(f"the policy removes all {len(orig_h)} encoder layers (drop_layers/drop_layer_count and "
                          f"layers at sparsity 1.0: {sorted(dropped)}); keep at least one")
    kept_h: list[list[int]] = [[] for _ in orig_h]
    kept_n: list[list[int]] = [[] for _ in orig_f]
    for li, j in enumerate(now):
        if j in dropped:
            continue
        kh = keep_top(head_scores[li], orig_h[j] - n_removed(orig_h[j], _sparsity(policy.head_sparsity, j) * fraction))
        kn = keep_top(neuron_scores[li], orig_f[j] - n_removed(orig_f[j], _sparsity(policy.ffn_sparsity, j) * fraction))
        kept_h[j] = [previous.kept_heads[j][x] for x in kh]  # type: ignore[index]
        kept_n[j] = [previous.kept_neurons[j][x] for x in kn]  # type: ignore[index]
    remaining = [j for j in range(len(orig_h)) if j not in dropped]
    return PruneRecord(criterion=policy.criterion, granularity="structured", kept_heads=kept_h, kept_neurons=kept_n,
                       dropped_layers=sorted(dropped), heads_per_layer=[len(kept_h[j]) for j in remaining],
                       ffn_per_layer=[len(kept_n[j]) for j in remaining], original_heads=list(orig_h),
                       original_ffn=list(orig_f))


def unstructured_masks(model: nn.Module, policy: PruningPolicy, fraction: float, scores: dict[str, torch.Tensor],
                       layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Masks removing the ``round(s * numel)`` lowest-scored weights of every prunable Linear of each
    layer (``s``: the policy's weight sparsity of original layer ``layers[i]``, times ``fraction``)."""
    names = {id(m): n for n, m in model.named_modules()}
    masks = {}
    for i, parts in enumerate(get_adapter(model).layers(model)):
        s = _sparsity(policy.weight_sparsity, layers[i]) * fraction
        for lin in parts.linears():
            name = names[id(lin)]
            sc = scores[name].flatten()
            k = min(int(round(s * sc.numel())), sc.numel() - 1)
            mask = torch.ones_like(sc)
            if k > 0:
                mask[torch.topk(sc, k, largest=False, sorted=False).indices] = 0.0
            masks[name] = mask.view_as(scores[name])
    return masks


def layer_weight_sparsity(model: nn.Module) -> list[float]:
    """Fraction of zero weights in each encoder layer's prunable Linear layers."""
    out = []
    for parts in get_adapter(model).layers(model):
        zeros = sum(int((lin.weight == 0).sum()) for lin in parts.linears())
        total = sum(lin.weight.numel() for lin in parts.linears())
        out.append(zeros / max(total, 1))
    return out


# ----------------------------------------------------------------------------- the call
def prune(model: nn.Module, policy: PruningPolicy, calibration_batches: Iterable[Batch] | None = None, *,
          dense: Any = None, seed: int | None = None, fraction: float = 1.0,
          previous: PruneRecord | None = None, replay: PruneRecord | None = None, scores: Any = None) -> PruneRecord:
    """Prune ``model`` in place by ``policy`` (no training) and return what was kept.

    * ``calibration_batches``: model input dicts, labelled (``labels``) for criteria that need
      gradients; reconstruction fits on them too. Read once into a list.
    * ``dense``: the unpruned model reconstruction matches (default: a copy of ``model`` taken
      before the first cut), or its :class:`~autoprune.reconstruct.DenseTargets` computed once on
      the calibration batches (then reconstruction fits on those batches, and
      ``calibration_batches`` are needed only by criteria that score with gradients).
    * ``seed``: the seed of random criteria (default ``policy.seed * 1000 + step``, as in a trial).
    * ``fraction`` and ``previous``: one step of an iterative schedule, cutting to ``fraction`` of
      the policy's sparsities from the state ``previous`` (the record the last step returned)
      describes; the returned record is composed (indices into the original model).
    * ``replay``: cut exactly to this record instead of scoring (re-application of an export).
    * ``scores``: the criterion's scores of the model as it stands, computed beforehand (what
      ``unit_scores`` returns for structured policies, ``model_weight_scores`` for unstructured ones);
      a trial passes the dense model's, computed once per process, to every first cut.
    """
    if not 0.0 < fraction <= 1.0:
        raise PolicyError(f"fraction {fraction} must lie in (0, 1]")
    if policy.reconstruct != "none" and dense is None:
        if previous is not None and previous.steps > 0:
            raise PolicyError("reconstruct needs the dense model: pass dense= when pruning a model that an earlier "
                              "step already cut")
        dense = copy.deepcopy(model)
    if previous is not None:
        _check_stands(model, previous)
    prev = previous if previous is not None else PruneRecord.unpruned(model, policy.criterion, policy.granularity)
    step = prev.steps + 1
    seed = policy.seed * 1000 + step if seed is None else seed
    timings = {k: float(prev.timings.get(k, 0.0)) for k in TIMING_KEYS}
    batches = None if calibration_batches is None else list(calibration_batches)
    criterion = get_criterion(policy.criterion)

    def timed(key: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kw)
        timings[key] += time.perf_counter() - t
        return out

    if replay is not None:
        timed("cut", apply_record, model, replay, previous=previous)
        record = copy.deepcopy(replay)
    elif policy.granularity == "structured":
        hs, ns = scores if scores is not None else timed("scoring", criterion.unit_scores, model, batches, seed=seed)
        record = timed("planning", _plan_structured, policy, fraction, prev, prev.steps == 0, hs, ns)
        timed("cut", apply_record, model, record, previous=prev)
    else:
        if scores is None:
            scores = timed("scoring", criterion.model_weight_scores, model, batches, seed=seed)
        masks = timed("planning", unstructured_masks, model, policy, fraction, scores, prev.remaining_layers())
        timed("cut", prune_unstructured, model, masks)
        record = copy.deepcopy(prev)
        record.criterion = policy.criterion
    model.zero_grad(set_to_none=True)
    record.steps = step
    record.heads_per_layer, record.ffn_per_layer = (list(x) for x in get_adapter(model).shape(model))
    if record.granularity == "unstructured":
        record.weight_sparsity = layer_weight_sparsity(model)
    if policy.reconstruct == "least_squares":
        record.reconstruction = timed("reconstruction", _reconstruct, model, dense, batches, record, policy)
    record.timings = timings
    logger.info("pruned (%s, step %d): heads %s, FFN %s%s", policy.criterion, step, record.heads_per_layer,
                record.ffn_per_layer, f", dropped layers {record.dropped_layers}" if record.dropped_layers else "")
    return record


def _reconstruct(model: nn.Module, dense: Any, batches: list[Batch] | None, record: PruneRecord,
                 policy: PruningPolicy) -> list[dict[str, Any]]:
    """Re-fit every pruned layer to its dense layer (``layer_map[i]``: the dense index of pruned layer ``i``)."""
    from autoprune.reconstruct import DenseTargets, reconstruct_layers

    if isinstance(dense, DenseTargets):
        batches = None  # the targets carry the batches they were computed on
    elif not batches:
        raise PolicyError("reconstruct: least_squares needs calibration batches (the model inputs it fits on)")
    kw: dict[str, Any] = {"layer_map": record.remaining_layers()}
    if policy.calibration is not None and policy.calibration.ridge is not None:
        kw["ridge"] = policy.calibration.ridge
    return [dict(r) for r in reconstruct_layers(model, dense, batches, **kw)]


def text_batches(tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None = None, *, batch_size: int = 32,
                 max_length: int = 128) -> list[Batch]:
    """Calibration batches from a list of sentences (with labels, for criteria that need gradients).

    Example:
        >>> # record = prune(model, policy, text_batches(tokenizer, ["a great film", "dull"], [1, 0]))
    """
    out = []
    for i in range(0, len(texts), batch_size):
        batch = dict(tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt"))
        if labels is not None:
            batch["labels"] = torch.tensor(list(labels[i:i + batch_size]), dtype=torch.long)
        out.append(batch)
    return out


__all__ = ["PruneRecord", "apply_record", "layer_weight_sparsity", "prune", "text_batches", "unstructured_masks"]
