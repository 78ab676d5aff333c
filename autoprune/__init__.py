"""autoprune: search pruning policies of BERT-family text models for the accuracy/speed trade-off.

The public API is re-exported here; modules starting with ``_`` are private.

Example (a notebook user; the tiny model is built from a config, nothing is downloaded):
    >>> import autoprune
    >>> policy = autoprune.PruningPolicy.uniform("l2", num_layers=2, heads=0.5, ffn=0.5)
    >>> policy.summary()
    'l2 heads[.50/.50] ffn[.50/.50] x1 200st'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so `import autoprune` stays cheap
_EXPORTS = {
    "RunConfig": "autoprune.config",
    "load_config": "autoprune.config",
    "PruningPolicy": "autoprune.policy",
    "RetrainBudget": "autoprune.policy",
    "Distillation": "autoprune.policy",
    "TrialResult": "autoprune.results",
    "AutopruneError": "autoprune.errors",
    "run_trial": "autoprune.trial",
    "TrialStopped": "autoprune.trial",
    "ensure_baseline": "autoprune.train",
    "baseline_metrics": "autoprune.train",
    "load_model": "autoprune.models",
    "get_adapter": "autoprune.models",
    "prune": "autoprune.pruner",
    "PruneRecord": "autoprune.pruner",
    "apply_record": "autoprune.pruner",
    "text_batches": "autoprune.pruner",
    "save_pruned": "autoprune.serialization",
    "load_pruned": "autoprune.serialization",
    "prune_structured": "autoprune.surgery",
    "prune_unstructured": "autoprune.surgery",
    "Criterion": "autoprune.criteria",
    "register_criterion": "autoprune.criteria",
    "get_criterion": "autoprune.criteria",
    "criterion_names": "autoprune.criteria",
    "measure_speed": "autoprune.measure",
    "LatencyTable": "autoprune.latency",
    "latency_table": "autoprune.latency",
    "count_flops": "autoprune.measure",
    "evaluate": "autoprune.measure",
    "onnx_int8_model": "autoprune.onnx_export",
    "export_onnx": "autoprune.onnx_export",
    "fake_quantized": "autoprune.quantize",
    "SearchSpace": "autoprune.search",
    "load_search_space": "autoprune.search",
    "run_search": "autoprune.search",
    "study_status": "autoprune.search",
    "load_study": "autoprune.study",
    "trial_records": "autoprune.study",
    "TrialRecord": "autoprune.study",
    "counted_trials": "autoprune.study",
    "front": "autoprune.study",
    "hypervolume": "autoprune.study",
    "reference_point": "autoprune.study",
    "build_dashboard": "autoprune.dashboard",
    "export_trial": "autoprune.export",
    "apply_policy": "autoprune.export",
}

# public modules reachable as attributes after a plain `import autoprune` (autoprune.visualization.plot_front)
_SUBMODULES = ("study", "visualization", "dashboard", "export", "search")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"autoprune.{name}")
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
