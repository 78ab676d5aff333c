"""Search space: a validated YAML description of which pruning policies a study may try.

Example (inline run config; the model depth is given explicitly here instead of read from the model):
    >>> from autoprune.search._space import SearchSpace
    >>> space = SearchSpace.model_validate({
    ...     "config": {"data": {"files": {"train": "t.tsv", "validation": "v.tsv"}}},
    ...     "criteria": ["l1"], "structured": {"heads": {"base": [0.0, 0.5]}, "ffn": {"mode": "free"}},
    ... })
    >>> space.sampler, space.n_trials, space.structured.heads.mode
    ('gp', 20, 'profile')
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from autoprune._yaml import read_yaml_mapping
from autoprune.config import RunConfig, config_from_dict, load_config
from autoprune.errors import ConfigError, format_validation_error

log = logging.getLogger("autoprune.search")

Num = float | int


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _pair(name: str, v: list[float] | None, lo: float, hi: float) -> None:
    if v is None:
        return
    if len(v) != 2 or v[0] > v[1]:
        raise ValueError(f"'{name}' must be [low, high] with low <= high, got {v}")
    if v[0] < lo or v[1] > hi:
        raise ValueError(f"'{name}' = {v} must lie within [{lo}, {hi}]")


class SparsitySpace(_Strict):
    """How the per-layer sparsity of one unit kind (heads, FFN neurons, weights) is searched.

    * ``mode: profile`` (default): two parameters, ``base`` (sparsity of the first layer) and
      ``slope`` (change from the first to the last layer); layer ``i`` gets
      ``base + slope * i / (L - 1)``, clipped to ``range``. Few parameters, so the space stays searchable.
    * ``mode: free``: one parameter per layer, each within ``range`` (one ``[low, high]`` for all
      layers, or one pair per layer).
    * ``mode: fixed``: always ``value`` in every layer (``value: 0`` switches the unit kind off).
    ``step`` quantises every sampled value (0.05 by default).
    """

    mode: Literal["profile", "free", "fixed"] = "profile"
    range: list[float] | list[list[float]] = Field(default_factory=lambda: [0.0, 0.9])
    base: list[float] = Field(default_factory=lambda: [0.0, 0.7])
    slope: list[float] = Field(default_factory=lambda: [-0.4, 0.4])
    value: float = Field(0.0, ge=0, lt=1)
    step: float = Field(0.05, gt=0, le=0.5)

    @field_validator("range")
    @classmethod
    def _range(cls, v: Any) -> Any:
        pairs = v if v and isinstance(v[0], list) else [v]
        for i, p in enumerate(pairs):
            _pair("range" if len(pairs) == 1 else f"range[{i}]", p, 0.0, 0.99)
        return v

    @model_validator(mode="after")
    def _pairs(self) -> "SparsitySpace":
        _pair("base", self.base, 0.0, 0.99)
        _pair("slope", self.slope, -0.99, 0.99)
        return self

    def layer_ranges(self, num_layers: int) -> list[list[float]]:
        if self.range and isinstance(self.range[0], list):
            return [list(p) for p in self.range]  # type: ignore[arg-type]
        return [list(self.range)] * num_layers  # type: ignore[list-item]

    def check_depth(self, num_layers: int, where: str) -> None:
        if self.range and isinstance(self.range[0], list) and len(self.range) != num_layers:
            raise ValueError(f"'{where}.range' has {len(self.range)} per-layer pairs but the model has "
                             f"{num_layers} encoder layers; give one [low, high] per layer or a single pair")

    def sample(self, trial: Any, prefix: str, num_layers: int) -> list[float]:
        """Draw one sparsity per layer from an Optuna trial (params named ``{prefix}_...``)."""
        ranges = self.layer_ranges(num_layers)
        if self.mode == "fixed":
            return [float(self.value)] * num_layers
        if self.mode == "free":
            return [round(_suggest(trial, f"{prefix}_l{i}", lo, hi, self.step), 4) for i, (lo, hi) in enumerate(ranges)]
        base = _suggest(trial, f"{prefix}_base", self.base[0], self.base[1], self.step)
        slope = _suggest(trial, f"{prefix}_slope", self.slope[0], self.slope[1], self.step)
        out = []
        for i, (lo, hi) in enumerate(ranges):
            d = i / (num_layers - 1) if num_layers > 1 else 0.0
            out.append(round(min(max(base + slope * d, lo), hi), 4))
        return out


def _suggest(trial: Any, name: str, lo: float, hi: float, step: float) -> float:
    if hi - lo < 1e-12:
        return float(lo)
    n = int(round((hi - lo) / step))
    if n < 1:
        return float(trial.suggest_float(name, lo, hi))
    hi = lo + n * step  # Optuna wants (high - low) to be a multiple of step
    return float(trial.suggest_float(name, lo, round(hi, 10), step=step))


class DropLayersSpace(_Strict):
    """How many whole encoder layers a structured policy drops: an integer in ``[min, max]`` (the
    layers are the ones of lowest summed unit importance under the trial's criterion)."""

    min: int = Field(0, ge=0)
    max: int = Field(..., ge=0)

    @model_validator(mode="after")
    def _order(self) -> "DropLayersSpace":
        if self.min > self.max:
            raise ValueError(f"'drop_layers' min {self.min} is above max {self.max}")
        return self

    def sample(self, trial: Any) -> int:
        if self.min == self.max:
            return self.min
        return int(trial.suggest_int("drop_layers", self.min, self.max))


class StructuredSpace(_Strict):
    heads: SparsitySpace = SparsitySpace()
    ffn: SparsitySpace = SparsitySpace()
    drop_layers: DropLayersSpace | None = Field(None, description="whole layers to drop (off by default)")


class UnstructuredSpace(_Strict):
    weights: SparsitySpace = SparsitySpace(base=[0.3, 0.9], range=[0.0, 0.95])


class RetrainSpace(_Strict):
    """Retraining budget choices: a scalar is fixed, a list is a categorical choice."""

    steps: int | list[int] = Field([100, 200])
    learning_rate: float | list[float] = 5e-5
    warmup_ratio: float | list[float] = 0.1
    batch_size: int | list[int] = 32
    iterative_steps: int | list[int] = 1
    keep_best: bool | list[bool] = False  # the better of before and after the last retraining phase

    @model_validator(mode="after")
    def _non_empty(self) -> "RetrainSpace":
        for name in ("steps", "learning_rate", "warmup_ratio", "batch_size", "iterative_steps", "keep_best"):
            v = getattr(self, name)
            if isinstance(v, list) and not v:
                raise ValueError(f"'retrain.{name}' is an empty list; give at least one choice")
        return self


class DistillationSpace(_Strict):
    """Knowledge distillation as an optional lever: ``enabled: [false, true]`` lets the search choose."""

    enabled: bool | list[bool] = False
    weight: float | list[float] = 0.5
    temperature: float | list[float] = 2.0


class Rung(_Strict):
    """One fidelity level of a multi-fidelity search (see :mod:`autoprune.search._rungs`).

    * ``retrain_steps``: the retraining budget of the rung, or ``full``: the steps the policy itself
      asks for (the space's ``retrain.steps``). Only the last rung is ``full``; the others run
      ``min(retrain_steps, the policy's steps)`` and must lie below the largest choice of
      ``retrain.steps``. A policy whose own budget is at or below a rung's (``retrain.steps``
      choices may include 0) runs its whole budget there; promoted, it runs it again above, and at
      the top rung its speed is timed in full like every other final result.
    * ``reconstruct``: the layer reconstruction policies get at this rung (``none`` or ``least_squares``:
      structured cuts re-fit what each layer keeps, unstructured cuts re-fit every masked projection
      with its zeros fixed); absent: the policy's own.
    * ``also_final`` (a rung below the top): each policy promoted from this rung also runs at the top
      rung *as this rung ran it*, a policy of its own (e.g. the cut and re-fit of rung 0, with no
      retraining) whose budget is this rung's, when its result here meets the search's accuracy floor.
      At the top rung it is timed in full and stands on the front beside the retrained policy, so a
      cut that retraining makes worse (a fine-tuned model retrained at a fresh learning rate) still
      reaches the front, as a final result of the policy that produced it.
    * ``speed`` (a rung below the top): ``screened`` times the objective's speedup in a few rounds
      (:meth:`~autoprune.config.MeasureConfig.screening`); ``table`` predicts it from a per-layer
      latency table of the objective's target, built once per machine and cached under the run
      directory (:mod:`autoprune.latency`; its error against the top rung's timings is in
      docs/BENCHMARKS.md). The top rung always times every target for real.

    Example:
        >>> Rung(retrain_steps=0, reconstruct="least_squares").label(), Rung(retrain_steps="full").label()
        ('0 steps, least_squares', 'full budget')
        >>> Rung(retrain_steps=0, also_final=True).label()
        '0 steps, also final'
    """

    retrain_steps: int | Literal["full"] = Field(..., description="retraining steps, or 'full' (the policy's own)")
    reconstruct: Literal["none", "least_squares"] | None = None
    also_final: bool = Field(False, description="policies promoted from this rung also run at the top rung as "
                             "this rung ran them (when they meet the accuracy floor here)")
    speed: Literal["screened", "table"] = Field("screened", description="how a rung below the top gets the speed "
                                                "objective: timed in a few rounds, or predicted by a latency table")

    @field_validator("retrain_steps")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"'retrain_steps' = {v} must be 0 or more, or 'full'")
        return v

    def label(self) -> str:
        """A short description, e.g. ``0 steps, least_squares`` or ``full budget``."""
        steps = "full budget" if self.retrain_steps == "full" else f"{self.retrain_steps} steps"
        return (steps + (f", {self.reconstruct}" if self.reconstruct is not None else "")
                + (", also final" if self.also_final else "") + (", speed from table" if self.speed == "table" else ""))

    def stored(self) -> dict[str, Any]:
        """The rung as a study records it (``also_final`` and ``speed`` only when not the default, so
        studies recorded before they existed continue with the same rungs)."""
        defaults = {k for k, v in (("also_final", self.also_final), ("speed", self.speed != "screened")) if not v}
        return self.model_dump(mode="json", exclude=defaults or None)


class EarlyStop(_Strict):
    """Stop a trial when, after ``min_fraction`` of its retraining budget, its validation accuracy is
    still more than ``margin`` below the floor (dense accuracy - ``accuracy_drop_floor``)."""

    margin: float = Field(0.02, ge=0, le=1)
    min_fraction: float = Field(0.5, ge=0, le=1)


class SearchSpace(_Strict):
    """A whole search: the run config, the policy space, the objectives and how to run trials."""

    config: str | dict[str, Any]
    criteria: list[str] = Field(default_factory=lambda: ["l1", "l2", "gradient"])
    granularities: list[Literal["structured", "unstructured"]] = Field(default_factory=lambda: ["structured"])
    structured: StructuredSpace = StructuredSpace()
    unstructured: UnstructuredSpace = UnstructuredSpace()
    retrain: RetrainSpace = RetrainSpace()
    distillation: DistillationSpace = DistillationSpace()
    quantize: bool | list[bool] = False
    qat: bool | list[bool] = Field(False, description="quantization-aware retraining of int8 policies")
    reconstruct: Literal["none", "least_squares"] | list[Literal["none", "least_squares"]] = Field(
        "none", description="layer reconstruction after each cut; a list lets the search choose")
    objectives: list[Literal["accuracy", "speedup"]] = Field(default_factory=lambda: ["accuracy", "speedup"])
    accuracy_drop_floor: float | None = Field(0.05, ge=0, le=1, description="max drop vs dense; null disables early stop")
    early_stop: EarlyStop = EarlyStop()
    # gp by default: on real trials of the quick-start space (benchmarks/samplers.py real, 18 trials,
    # 6 seeds) it reached 1.87x random search's hypervolume, against 1.08x for tpe and 1.05x for nsga2
    sampler: Literal["nsga2", "tpe", "gp", "random"] = "gp"
    population_size: int = Field(8, ge=2, description="NSGA-II population size")
    startup_trials: int = Field(10, ge=1, description="TPE and GP: random trials before they model the front")
    n_trials: int = Field(20, ge=1)
    trials_in_flight: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0, description="GPUs each trial trains and evaluates on (Ray num_gpus; "
                                  "fractions let several trials share one GPU); 0: trials run on CPU")
    seed: int = 0
    rungs: list[Rung] | None = Field(None, description="fidelity levels of a multi-fidelity search, cheapest "
                                     "first, the last one 'full' (absent: every trial runs the full budget)")
    promote_fraction: float = Field(1 / 3, gt=0, le=1, description="the top fraction of the policies finished "
                                    "at a rung that moves on to the next one")
    promote_floor_slack: float | None = Field(
        None, ge=0, description="with accuracy_drop_floor: a policy whose accuracy at its rung lies more than this "
        "below the search's accuracy floor ranks for promotion after every policy that does not (absent: rank alone)")
    timeout_s: float | None = Field(None, gt=0, description="wall-time budget of one run of the search in seconds: "
                                    "no new trial starts after it (`search --timeout` overrides)")
    save_models: bool = Field(False, description="save every completed trial's pruned model under "
                              "<run_dir>/models/<study>/trial_<n>, so export copies it instead of rebuilding")

    # set by load_search_space, not by the file
    _source: str = PrivateAttr("<space>")
    _base_dir: str | None = PrivateAttr(None)

    @property
    def source(self) -> str:
        """The file this space was read from (for error messages)."""
        return self._source

    @property
    def base_dir(self) -> str | None:
        """Folder that relative paths in the space start from."""
        return self._base_dir

    @field_validator("criteria", "granularities")
    @classmethod
    def _nonempty(cls, v: list[str], info: Any) -> list[str]:
        if not v:
            raise ValueError(f"'{info.field_name}' is empty; list at least one choice")
        if len(set(v)) != len(v):
            raise ValueError(f"'{info.field_name}' lists a choice twice: {v}")
        return v

    @field_validator("criteria")
    @classmethod
    def _known_criteria(cls, v: list[str]) -> list[str]:
        from autoprune.criteria import criterion_names

        unknown = [c for c in v if c not in criterion_names()]
        if unknown:
            raise ValueError(f"'criteria' lists unknown {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(criterion_names())}")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if sorted(v) != ["accuracy", "speedup"]:
            raise ValueError("'objectives' must be [accuracy, speedup] (both maximised)")
        return ["accuracy", "speedup"]

    @model_validator(mode="after")
    def _structured_any(self) -> "SearchSpace":
        if "structured" in self.granularities:
            h, f = self.structured.heads, self.structured.ffn
            if h.mode == "fixed" and f.mode == "fixed" and h.value == 0 and f.value == 0:
                raise ValueError("'structured': heads and ffn are both fixed at 0; nothing would be pruned")
        return self

    @model_validator(mode="after")
    def _rungs(self) -> "SearchSpace":
        if self.promote_floor_slack is not None and (self.rungs is None or self.accuracy_drop_floor is None):
            raise ValueError("'promote_floor_slack' ranks promotions against the accuracy floor: it needs 'rungs' and "
                             "'accuracy_drop_floor'; set both or leave it out")
        if self.rungs is None:
            return self
        if len(self.rungs) < 2:
            raise ValueError("'rungs' needs at least two levels (a cheap one and the last, 'retrain_steps: full'); "
                             "leave 'rungs' out to run every policy at the full budget")
        if self.rungs[-1].retrain_steps != "full":
            raise ValueError("the last of 'rungs' must be 'retrain_steps: full' (the budget the policy asks for), so "
                             "that the top rung's results are final")
        steps = [r.retrain_steps for r in self.rungs[:-1]]
        if "full" in steps:
            raise ValueError("only the last of 'rungs' may be 'retrain_steps: full'")
        if self.rungs[-1].also_final:
            raise ValueError("'also_final' belongs to a rung below the top (the top rung's results are final already)")
        if self.rungs[-1].speed == "table":
            raise ValueError("'speed: table' belongs to a rung below the top: the top rung's results are final and "
                             "always timed; remove it from the last rung")
        if any(b <= a for a, b in zip(steps, steps[1:])):  # type: ignore[operator]
            raise ValueError(f"the retrain_steps of 'rungs' must increase from rung to rung, got {steps}")
        choices = self.retrain.steps if isinstance(self.retrain.steps, list) else [self.retrain.steps]
        if steps[-1] >= max(choices):  # type: ignore[operator]
            raise ValueError(f"'rungs' retrain_steps {steps[-1]} is not below the largest retraining budget the "
                             f"space can choose (retrain.steps {self.retrain.steps}): that rung would run every "
                             f"policy's full budget; use fewer steps or drop the rung")
        return self

    def rung_policy(self, policy: Any, rung: int) -> Any:
        """The policy as rung ``rung`` runs it: its retraining budget cut to the rung's, its
        reconstruction the rung's; a rung without retraining cuts in one step
        (an iterative schedule alternates cuts with retraining: with none, its steps would only repeat
        the scoring and the reconstruction). Without rungs: the policy itself.

        Example:
            >>> from autoprune.policy import PruningPolicy
            >>> space = SearchSpace.model_validate({"config": {"data": {"files": {"train": "t", "validation": "v"}}},
            ...     "retrain": {"steps": [300, 600]}, "rungs": [{"retrain_steps": 0, "reconstruct": "least_squares"},
            ...     {"retrain_steps": 100}, {"retrain_steps": "full"}]})
            >>> pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5, retrain_steps=600)
            >>> pol = pol.model_copy(update={"iterative_steps": 2})
            >>> [(space.rung_policy(pol, r).retrain.steps, space.rung_policy(pol, r).reconstruct,
            ...   space.rung_policy(pol, r).iterative_steps) for r in range(3)]
            [(0, 'least_squares', 1), (100, 'none', 2), (600, 'none', 2)]
            >>> space.rung_policy(PruningPolicy.uniform("l1", 2, weights=0.5, retrain_steps=600), 0).reconstruct
            'least_squares'
        """
        if self.rungs is None:
            return policy
        from autoprune.policy import PruningPolicy

        spec = self.rungs[rung]
        full = policy.retrain.steps
        steps = full if spec.retrain_steps == "full" else min(int(spec.retrain_steps), full)
        d = policy.to_dict()
        d["retrain"] = dict(d.get("retrain") or {}, steps=steps)
        if steps == 0:
            d["iterative_steps"] = 1
        if spec.reconstruct is not None:
            d["reconstruct"] = spec.reconstruct
        return PruningPolicy.model_validate(d)

    # ------------------------------------------------------------------ run config
    def run_config(self) -> RunConfig:
        """The RunConfig this space searches over (a path relative to the space file, or inline)."""
        base = Path(self.base_dir) if self.base_dir else Path.cwd()
        if isinstance(self.config, str):
            p = Path(self.config)
            if not p.is_absolute():
                p = base / p
            if not p.is_file():
                raise ConfigError(f"{self.source}: field 'config': run config file {p} not found "
                                  f"(a relative path starts at the search space's folder)")
            return load_config(p)
        return config_from_dict(self.config, f"{self.source} (field 'config')", base)

    def check_depth(self, num_layers: int) -> None:
        """Raise ConfigError if per-layer ranges do not fit a model of ``num_layers`` layers."""
        try:
            self.structured.heads.check_depth(num_layers, "structured.heads")
            self.structured.ffn.check_depth(num_layers, "structured.ffn")
            self.unstructured.weights.check_depth(num_layers, "unstructured.weights")
        except ValueError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None
        drop = self.structured.drop_layers
        if drop is not None and drop.max >= num_layers:
            raise ConfigError(f"{self.source}: 'structured.drop_layers.max' = {drop.max} would remove every one of the "
                              f"model's {num_layers} encoder layers; use at most {num_layers - 1}")

    # ------------------------------------------------------------------ sampling
    def sample_policy(self, trial: Any, num_layers: int) -> "Any":
        """Draw a :class:`~autoprune.policy.PruningPolicy` from an Optuna trial (ask/tell)."""
        from autoprune.policy import Distillation, PruningPolicy, RetrainBudget

        def pick(name: str, v: Any) -> Any:
            if isinstance(v, list):
                return v[0] if len(v) == 1 else trial.suggest_categorical(name, v)
            return v

        criterion = pick("criterion", list(self.criteria))
        granularity = pick("granularity", list(self.granularities))
        kw: dict[str, Any] = {}
        if granularity == "structured":
            kw["head_sparsity"] = self.structured.heads.sample(trial, "heads", num_layers)
            kw["ffn_sparsity"] = self.structured.ffn.sample(trial, "ffn", num_layers)
            if self.structured.drop_layers is not None:
                kw["drop_layer_count"] = self.structured.drop_layers.sample(trial)
        else:
            kw["weight_sparsity"] = self.unstructured.weights.sample(trial, "weights", num_layers)
        r = self.retrain
        retrain = RetrainBudget(steps=pick("retrain_steps", r.steps), learning_rate=pick("learning_rate", r.learning_rate),
                                warmup_ratio=pick("warmup_ratio", r.warmup_ratio), batch_size=pick("batch_size", r.batch_size),
                                keep_best=bool(pick("keep_best", r.keep_best)))
        distill = None
        if pick("distill", self.distillation.enabled):
            distill = Distillation(weight=pick("distill_weight", self.distillation.weight),
                                   temperature=pick("distill_temperature", self.distillation.temperature))
        quantize = bool(pick("quantize", self.quantize))
        qat = bool(pick("qat", self.qat)) if quantize else False
        reconstruct = pick("reconstruct", self.reconstruct)
        return PruningPolicy(criterion=criterion, granularity=granularity, iterative_steps=pick("iterative_steps", r.iterative_steps),
                             retrain=retrain, distillation=distill, quantize=quantize, qat=qat,
                             reconstruct=reconstruct, seed=self.seed + trial.number, **kw)

    def raw(self) -> dict[str, Any]:
        """JSON-able form stored in the study (``user_attrs['space']``)."""
        return self.model_dump(mode="json")


def space_from_dict(raw: dict[str, Any], source: str = "<space>", base_dir: str | Path | None = None) -> SearchSpace:
    """Validate a raw mapping into a :class:`SearchSpace` with one clear line per problem."""
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    space._source = source
    space._base_dir = str(Path(base_dir).resolve()) if base_dir is not None else None
    return space


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and validate a search space YAML (``yaml.safe_load``); its run config is validated too.

    Example:
        >>> space = load_search_space("search_spaces/quickstart.yaml")  # doctest: +SKIP
        >>> space.n_trials  # doctest: +SKIP
        8
    """
    p = Path(path)
    raw = read_yaml_mapping(p, ConfigError)
    space = space_from_dict(raw, str(p), p.resolve().parent)
    space.run_config()  # fail early on a bad run config
    return space
