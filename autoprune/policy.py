"""The pruning policy: what to cut, how much per layer, how to score it and how to retrain.

A :class:`PruningPolicy` is plain data: it knows nothing of models or Ray. It round-trips
through YAML and JSON, and :meth:`PruningPolicy.check_layers` checks it against a model's
depth before any work starts.

Example:
    >>> from autoprune import PruningPolicy
    >>> p = PruningPolicy.uniform("l1", num_layers=6, heads=0.5, ffn=0.5, retrain_steps=100)
    >>> p.head_sparsity
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    >>> PruningPolicy.from_yaml(p.to_yaml()) == p
    True
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoprune._yaml import read_yaml_mapping
from autoprune.errors import PolicyError, format_validation_error

logger = logging.getLogger(__name__)

GRANULARITIES = ("structured", "unstructured")
RECONSTRUCTIONS = ("none", "least_squares")
# fields read from exported policy files written before kept indices moved to the prune record
LEGACY_KEPT_KEYS = ("kept_heads", "kept_neurons")
# fields left out of to_dict() while at their default, so policies written before they existed keep
# the same dict (and the same search-space key)
# (a path of keys into the dict)
_OMIT_AT_DEFAULT = {("drop_layer_count",): 0, ("reconstruct",): "none", ("retrain", "keep_best"): False}


class RetrainBudget(BaseModel):
    """Fine-tuning after pruning: total optimiser steps (split across the iterative schedule).

    ``keep_best``: score the model on the validation split before its last retraining phase and after
    it, and keep the better of the two (the retraining is undone when it lowered validation accuracy,
    as ``load_best_model_at_end`` does in a Hugging Face ``Trainer``); a trial the early-stop rule stops
    stays stopped.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=0)
    learning_rate: float = Field(3e-5, gt=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)
    keep_best: bool = False


class Distillation(BaseModel):
    """Knowledge distillation from the dense baseline's logits during retraining."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.5, ge=0, le=1, description="share of the KD loss; 1 - weight goes to the labels")
    temperature: float = Field(2.0, gt=0)


class Calibration(BaseModel):
    """The calibration set of scoring (gradient criteria) and reconstruction.

    ``batches``: how many training batches (of ``retrain.batch_size`` sentences) to use; ``None``
    takes the run config's ``calibration_batches``. ``ridge``: the ridge term of the least-squares
    refit; ``None`` takes :func:`autoprune.reconstruct.reconstruct_layers`' own default.
    """

    model_config = ConfigDict(extra="forbid")

    batches: int | None = Field(None, ge=1)
    ridge: float | None = Field(None, ge=0)


def _check_sparsities(name: str, values: list[float] | None, *, whole: bool) -> list[float] | None:
    if values is None:
        return None
    if len(values) == 0:
        raise ValueError(f"'{name}' is an empty list; give one sparsity per layer")
    for i, v in enumerate(values):
        if whole and not (0.0 <= v <= 1.0):
            raise ValueError(f"'{name}[{i}]' = {v} is outside [0, 1]; a sparsity is the fraction removed "
                             f"(0 keeps everything, 1 removes the whole layer)")
        if not whole and not (0.0 <= v < 1.0):
            raise ValueError(
                f"'{name}[{i}]' = {v} is outside [0, 1); a sparsity is the fraction removed "
                f"(0 keeps everything, 0.99 keeps almost nothing, 1 is not allowed)"
            )
    return [float(v) for v in values]


class PruningPolicy(BaseModel):
    """One point of the search space.

    * ``criterion``: the name of a registered importance criterion (:func:`autoprune.criteria.criterion_names`).
    * ``granularity``: ``structured`` removes attention heads and FFN neurons physically;
      ``unstructured`` zeroes individual weights of the encoder's Linear layers.
    * ``head_sparsity`` / ``ffn_sparsity`` (structured) or ``weight_sparsity`` (unstructured):
      the fraction removed, one value per encoder layer. Heads and FFN neurons take [0, 1]: a layer
      at 1.0 in either list is dropped whole; weights take [0, 1).
    * ``drop_layers`` (a fixed list of encoder layer indices) or ``drop_layer_count`` (that many
      layers of lowest summed unit importance under ``criterion``): structured only; whole encoder
      layers removed, the sparsities of dropped layers ignored.
    * ``iterative_steps``: reach the target in k equal steps, retraining between them (whole
      layers go in the first step).
    * ``reconstruct``: ``least_squares`` re-fits what each pruned layer keeps to the dense layer's
      output on calibration batches after every cut; ``calibration`` sizes that set.
    * ``retrain``: the fine-tuning budget after pruning (``steps: 0`` skips fine-tuning);
      ``distillation`` and ``quantize`` are optional levers; ``qat`` (with ``quantize``) retrains
      with int8 rounding simulated in every Linear, so the fine-tune learns the rounding it will be
      evaluated with (:func:`autoprune.quantize.fake_quantized`).

    Which units a pruning kept is not part of the policy: :func:`autoprune.pruner.prune` returns it
    as a :class:`~autoprune.pruner.PruneRecord`, which export writes beside the policy.
    """

    model_config = ConfigDict(extra="forbid")

    criterion: str
    granularity: Literal["structured", "unstructured"] = "structured"
    head_sparsity: list[float] | None = None
    ffn_sparsity: list[float] | None = None
    weight_sparsity: list[float] | None = None
    drop_layers: list[int] | None = None
    drop_layer_count: int = Field(0, ge=0)
    iterative_steps: int = Field(1, ge=1, le=20)
    reconstruct: Literal["none", "least_squares"] = "none"
    calibration: Calibration | None = None
    retrain: RetrainBudget = RetrainBudget()
    distillation: Distillation | None = None
    quantize: bool = False
    qat: bool = False
    seed: int = 0

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        from autoprune.criteria import criterion_names

        if v not in criterion_names():
            raise ValueError(f"unknown criterion '{v}'; choose one of {', '.join(criterion_names())}")
        return v

    @field_validator("head_sparsity", "ffn_sparsity", "weight_sparsity")
    @classmethod
    def _valid_sparsity(cls, v: list[float] | None, info: Any) -> list[float] | None:
        return _check_sparsities(info.field_name, v, whole=info.field_name != "weight_sparsity")

    @field_validator("drop_layers")
    @classmethod
    def _valid_drop(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"'drop_layers' = {v} must list distinct encoder layer indices (0 is the first layer)")
        return sorted(int(i) for i in v)

    @model_validator(mode="after")
    def _consistent(self) -> "PruningPolicy":
        if self.granularity == "structured":
            if self.head_sparsity is None and self.ffn_sparsity is None:
                raise ValueError("a structured policy needs 'head_sparsity' and/or 'ffn_sparsity' (one value per layer)")
            if self.weight_sparsity is not None:
                raise ValueError("'weight_sparsity' belongs to unstructured policies; set granularity: unstructured")
            if self.head_sparsity is not None and self.ffn_sparsity is not None \
                    and len(self.head_sparsity) != len(self.ffn_sparsity):
                raise ValueError(
                    f"'head_sparsity' has {len(self.head_sparsity)} layers but 'ffn_sparsity' has "
                    f"{len(self.ffn_sparsity)}; give one value per encoder layer in both"
                )
        else:
            if self.weight_sparsity is None:
                raise ValueError("an unstructured policy needs 'weight_sparsity' (one value per layer)")
            if self.head_sparsity is not None or self.ffn_sparsity is not None:
                raise ValueError("'head_sparsity'/'ffn_sparsity' belong to structured policies; set granularity: structured")
            if self.drop_layers or self.drop_layer_count:
                raise ValueError("'drop_layers'/'drop_layer_count' belong to structured policies; set granularity: "
                                 "structured")
        if self.drop_layers and self.drop_layer_count:
            raise ValueError("give either 'drop_layers' (which layers) or 'drop_layer_count' (how many, chosen by "
                             "the criterion), not both")
        if self.qat and not self.quantize:
            raise ValueError("'qat: true' (quantization-aware retraining) needs 'quantize: true'; "
                             "set quantize: true or drop qat")
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, criterion: str, num_layers: int, *, heads: float = 0.0, ffn: float = 0.0,
                weights: float | None = None, retrain_steps: int = 200, **kw: Any) -> "PruningPolicy":
        """The hand-made baseline: the same sparsity in every layer."""
        if weights is not None:
            return cls(criterion=criterion, granularity="unstructured", weight_sparsity=[weights] * num_layers,
                       retrain=RetrainBudget(steps=retrain_steps), **kw)
        return cls(criterion=criterion, head_sparsity=[heads] * num_layers, ffn_sparsity=[ffn] * num_layers,
                   retrain=RetrainBudget(steps=retrain_steps), **kw)

    @property
    def num_layers(self) -> int:
        for v in (self.head_sparsity, self.ffn_sparsity, self.weight_sparsity):
            if v is not None:
                return len(v)
        return 0  # unreachable: validation requires one list

    def check_layers(self, num_layers: int, *, source: str = "policy") -> None:
        """Raise :class:`PolicyError` if the per-layer lists do not match a model of ``num_layers`` layers."""
        for name in ("head_sparsity", "ffn_sparsity", "weight_sparsity"):
            v = getattr(self, name)
            if v is not None and len(v) != num_layers:
                raise PolicyError(
                    f"{source}: '{name}' has {len(v)} entries but the model has {num_layers} encoder layers; "
                    f"give exactly one value per layer"
                )
        if self.drop_layers and self.drop_layers[-1] >= num_layers:
            raise PolicyError(f"{source}: 'drop_layers' = {self.drop_layers} names a layer beyond the model's "
                              f"{num_layers} encoder layers (indices 0..{num_layers - 1})")
        if self.drop_layer_count >= num_layers:
            raise PolicyError(f"{source}: 'drop_layer_count' = {self.drop_layer_count} would remove every one of the "
                              f"model's {num_layers} encoder layers; keep at least one")

    def summary(self) -> str:
        """A short human-readable description, e.g. for tables and hover text."""
        def fmt(v: list[float] | None) -> str:
            return "-" if v is None else "/".join(f"{x:.2f}".lstrip("0") or "0" for x in v)
        if self.granularity == "structured":
            s = f"{self.criterion} heads[{fmt(self.head_sparsity)}] ffn[{fmt(self.ffn_sparsity)}]"
        else:
            s = f"{self.criterion} weights[{fmt(self.weight_sparsity)}]"
        if self.drop_layers:
            s += f" drop{self.drop_layers}"
        elif self.drop_layer_count:
            s += f" drop{self.drop_layer_count}"
        s += f" x{self.iterative_steps} {self.retrain.steps}st"
        if self.retrain.keep_best and self.retrain.steps:
            s += "-best"
        if self.reconstruct != "none":
            s += " lsq"
        if self.distillation:
            s += f" kd{self.distillation.weight:.2f}"
        if self.quantize:
            s += " int8-qat" if self.qat else " int8"
        return s

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude_none=True)
        for (*parents, k), default in _OMIT_AT_DEFAULT.items():
            part = d
            for name in parents:
                part = part.get(name) or {}
            if k in part and part[k] == default:
                del part[k]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> "PruningPolicy":
        """Validate a mapping; kept indices of older exported files are left out with a logged note
        (:func:`autoprune.export.read_export` turns them into a prune record)."""
        data, legacy = split_legacy_kept(data)
        if legacy:
            logger.warning("%s: ignoring %s: the units a pruning kept live in its prune record now; re-apply an "
                           "exported cut with 'autoprune apply'", source, "/".join(legacy))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(format_validation_error(exc, source)) from None

    @classmethod
    def from_json(cls, text: str, source: str = "policy") -> "PruningPolicy":
        return cls._from_text(text, source, "JSON")

    @classmethod
    def from_yaml(cls, text: str, source: str = "policy") -> "PruningPolicy":
        return cls._from_text(text, source, "YAML")

    @classmethod
    def _from_text(cls, text: str, source: str, fmt: str) -> "PruningPolicy":
        try:
            data = json.loads(text) if fmt == "JSON" else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{source}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"{source}: malformed YAML: {exc}") from None
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: expected a {'JSON object' if fmt == 'JSON' else 'YAML mapping'}")
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> "PruningPolicy":
        """Load a policy from a ``.yaml``/``.yml``/``.json`` file.

        An exported ``policy.yaml`` carries extra sections (metrics, provenance); the
        policy itself is read from its ``policy`` key when present.
        """
        p = Path(path)
        if p.suffix == ".json":
            if not p.is_file():
                raise PolicyError(f"{p}: file not found")
            return cls.from_json(p.read_text(encoding="utf-8"), str(p))
        data = read_yaml_mapping(p, PolicyError)
        if "policy" in data and isinstance(data["policy"], dict):
            data = data["policy"]
        return cls.from_dict(data, str(p))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.write_text(self.to_json() if p.suffix == ".json" else self.to_yaml(), encoding="utf-8")


def split_legacy_kept(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a policy mapping into its fields and the kept indices older exports stored in it.

    Example:
        >>> split_legacy_kept({"criterion": "l1", "kept_heads": [[0]]})
        ({'criterion': 'l1'}, {'kept_heads': [[0]]})
    """
    if not isinstance(data, dict) or not any(k in data for k in LEGACY_KEPT_KEYS):
        return data, {}
    rest = {k: v for k, v in data.items() if k not in LEGACY_KEPT_KEYS}
    return rest, {k: data[k] for k in LEGACY_KEPT_KEYS if k in data}
