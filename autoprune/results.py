"""Plain-data results that cross process boundaries (Ray workers -> driver -> study)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class EvalMetrics:
    """Classification metrics on one split."""

    accuracy: float
    macro_f1: float
    per_class_recall: list[float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpeedReport:
    """Interleaved latency of the dense and pruned models (milliseconds, medians)."""

    batch_size: int
    seq_len: int
    threads: int
    repeats: int
    dense_ms: float
    pruned_ms: float
    speedup: float
    dense_ms_b1: float | None = None
    pruned_ms_b1: float | None = None
    speedup_b1: float | None = None
    # quartiles of the per-round speedup (dense_ms / pruned_ms of the same round) at batch_size x seq_len
    speedup_q1: float | None = None
    speedup_q3: float | None = None
    rounds: int | None = None  # timed rounds it took (repeats, more when the first ones were noisy)
    noisy: bool = False  # the per-round spread stayed above max_spread after max_repeats rounds


@dataclass
class TrialResult:
    """Everything one trial measured. Stored whole on the Optuna trial (``user_attrs['result']``)."""

    policy: dict[str, Any]
    accuracy: float
    macro_f1: float
    per_class_recall: list[float]
    dense_accuracy: float
    dense_macro_f1: float
    accuracy_drop: float
    eval_split: str
    eval_n: int
    speedup: float
    latency_ms: float
    dense_latency_ms: float
    speedup_b1: float | None
    latency_b1_ms: float | None
    dense_latency_b1_ms: float | None
    # "measured"; "size-only" (unstructured: zeros speed up no dense kernel); or, unstructured + int8,
    # "int8 measured; zeros size-only" (the measured speedup comes from the int8 kernels alone)
    speed_label: str
    flops: int
    dense_flops: int
    flops_reduction: float
    params: int
    dense_params: int
    size_bytes: int
    dense_size_bytes: int
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    weight_sparsity: float
    retrain_steps: int
    phase_seconds: dict[str, float]
    history: list[list[float]] = field(default_factory=list)  # [step, validation accuracy]
    measure: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None
    # accuracy on the reported split right after the (first) cut, before any retraining
    accuracy_pruned: float | None = None
    # what the pruning kept (autoprune.pruner.PruneRecord.to_dict(); results stored before it give
    # ``kept_heads`` / ``kept_neurons`` instead, which autoprune.export still reads)
    prune_record: dict[str, Any] | None = None
    # warnings on the measured speedup (autoprune.measure.speed_flags): noisy, implausibly slow or fast
    speed_flags: list[str] = field(default_factory=list)
    # quartiles of the per-round speedup behind ``speedup`` (its spread)
    speedup_quartiles: list[float] | None = None
    # every measurement target's numbers (autoprune.runtimes.measure_targets) when measure.targets is set
    targets: dict[str, Any] | None = None
    # retrain.keep_best: whether the last retraining phase was undone (it lowered validation accuracy)
    retrain_undone: bool | None = None
    # where the speed was measured or predicted for (autoprune.runtimes.machine): CPU model, CPUs, versions
    machine: dict[str, Any] | None = None

    @property
    def kept_heads(self) -> list[list[int]] | None:
        """The heads each layer kept (indices into the dense layer), read from ``prune_record``."""
        return (self.prune_record or {}).get("kept_heads")

    @property
    def kept_neurons(self) -> list[list[int]] | None:
        """The FFN neurons each layer kept, read from ``prune_record``."""
        return (self.prune_record or {}).get("kept_neurons")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
