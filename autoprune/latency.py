"""Latency table: a structured policy's speedup predicted from per-layer timings, not measured.

A multi-fidelity search scores many policies at its cheap rung; timing each one costs seconds that
add up. A :class:`LatencyTable` is built once per machine, model shape and measurement target: it
times, against the dense model and in that target (:func:`autoprune.runtimes.measure_target`),

* every layer's attention cut to ``h`` heads, for ``h`` on a grid (the FFN left whole),
* every layer's FFN cut to ``n`` neurons, for ``n`` on a grid (the heads left whole),
* half of the layers dropped,
* for an int8 table, the dense model in ONNX Runtime dynamic int8,

each as a share of the dense model's time, and fits what one head and one FFN neuron of one layer
cost (least squares through the uncut model, over the grid). A policy's predicted latency, as a
share of dense, is then the int8 (or float) base, less what its missing heads and neurons cost,
less a whole layer per dropped layer; the predicted speedup is its inverse. Attention and FFN run
one after the other in a layer and layers one after the other, so the sum is what the model runs;
the fit through many cuts, rather than reading one cut, keeps one noisy timing from deciding a
prediction (on the 2-core machine the int8 timings of a single cut moved by several per cent
between builds). Zeroed weights (unstructured cuts) change no dense kernel, so only the shape and
int8 count.

The table is a prediction: a search uses it only below its top rung (a rung's ``speed: table``),
and every final result is timed for real. ``benchmarks/latency_table.py`` reports its error
against the speedups measured at the top rung.

Example (a 2-layer model, 4 heads and 8 neurons a layer; a head costs 5% of the dense time, a neuron 2.5%):
    >>> t = LatencyTable(key="k", target={}, int8=False, num_layers=2, heads=4, neurons=8,
    ...                  head_grid=[1, 2, 4], head_share=[-0.15, -0.1, 0.0], per_head=0.05,
    ...                  neuron_grid=[1, 4, 8], neuron_share=[-0.175, -0.1, 0.0], per_neuron=0.025,
    ...                  layer_share=0.5, base=1.0, dense_ms=10.0)
    >>> t.predict([4, 4], [8, 8])  # the dense shape
    1.0
    >>> round(t.predict([2, 2], [8, 8]), 6)  # both layers' attention halved: 1 - 4 * 0.05 of dense time
    1.25
    >>> t.predict([4], [8])  # one of two layers dropped: 1 - 0.5
    2.0
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch.nn as nn

    from autoprune.config import Target

logger = logging.getLogger(__name__)

#: bump when what a table holds or how it is built changes (old cache files are then rebuilt)
TABLE_VERSION = 2
#: default grid steps (heads: 1, 3, 6, 9, 12 for 12 heads; FFN: 1, 256, ..., 1536 for 1,536 neurons)
#: and timed rounds per point
HEAD_POINTS, NEURON_POINTS, REPEATS = 4, 6, 7


@dataclass
class LatencyTable:
    """Per-layer shares of the dense model's latency in one measurement target (see the module doc).

    ``head_share[i]``: what cutting *one* layer's attention to ``head_grid[i]`` heads changed the
    latency by, as measured, a share of the dense model's (0 at the full count, negative below it);
    the same for ``neuron_share`` and the FFN. ``per_head`` / ``per_neuron``: the share one head /
    one FFN neuron of one layer costs, fitted to those. ``layer_share``: what one whole layer costs.
    ``base``: the dense shape's latency as a share of the dense float model's (1.0, or the int8
    model's for an int8 table). ``dense_ms``: the dense model's median while the table was built.
    """

    key: str
    target: dict[str, Any]
    int8: bool
    num_layers: int
    heads: int
    neurons: int
    head_grid: list[int]
    head_share: list[float]
    per_head: float
    neuron_grid: list[int]
    neuron_share: list[float]
    per_neuron: float
    layer_share: float
    base: float
    dense_ms: float
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = ""

    def relative_latency(self, heads: Sequence[int], neurons: Sequence[int]) -> float:
        """Predicted latency of a model with these heads and FFN neurons per remaining layer, as a share
        of the dense float model's (layers beyond ``len(heads)`` count as dropped)."""
        if len(heads) != len(neurons):
            raise ValueError(f"{len(heads)} head counts but {len(neurons)} FFN widths; give one of each per layer")
        if len(heads) > self.num_layers:
            raise ValueError(f"{len(heads)} layers, but the table's model has {self.num_layers}")
        share = self.base - (self.num_layers - len(heads)) * self.layer_share
        for h, n in zip(heads, neurons):
            share -= self.per_head * (self.heads - h) + self.per_neuron * (self.neurons - n)
        return share

    def predict(self, heads: Sequence[int], neurons: Sequence[int]) -> float:
        """Predicted speedup over the dense float model: the inverse of :meth:`relative_latency`."""
        return 1.0 / max(self.relative_latency(heads, neurons), 1e-3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyTable":
        """A table from :meth:`to_dict`; the per-unit costs are fitted from the shares when it has none
        (a table written before they were stored)."""
        data = dict(data)
        for unit, grid_key, share_key in (("per_head", "head_grid", "head_share"),
                                          ("per_neuron", "neuron_grid", "neuron_share")):
            if unit not in data:
                data[unit] = _slope(data[grid_key], data[share_key])
        return cls(**data)


def _slope(grid: Sequence[int], share: Sequence[float]) -> float:
    """Least-squares cost of one unit, from the shares measured with ``grid`` units kept (the last is
    the full count, share 0): the line through (full, 0) that fits the others best.

    Example:
        >>> _slope([1, 2, 4], [-0.3, -0.2, 0.0])
        0.1
    """
    full = grid[-1]
    num = sum((full - g) * -y for g, y in zip(grid, share))
    den = sum((full - g) ** 2 for g in grid)
    return round(num / den, 12) if den else 0.0


def grid(total: int, points: int) -> list[int]:
    """``points`` + 1 unit counts from 1 to ``total``, evenly spaced (distinct, ascending).

    Example:
        >>> grid(12, 4), grid(1536, 6)[:3], grid(2, 4)
        ([1, 3, 6, 9, 12], [1, 256, 512], [1, 2])
    """
    return sorted({1, total, *(max(1, round(total * i / points)) for i in range(1, points))})


def _timed(target: "Target", repeats: int) -> "Target":
    """``target`` as a table times it: batch ``batch_size`` only, one warm-up round, ``repeats`` rounds."""
    return target.model_copy(update={"batch1": False, "warmup": 1, "repeats": repeats})


def table_key(model: "nn.Module", target: "Target", int8: bool, head_points: int, neuron_points: int,
              repeats: int) -> str:
    """A hash of what a table depends on: the dense model's architecture (not its weights), the
    target, int8, the grids, the timed rounds and :func:`autoprune.runtimes.machine`."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    from autoprune.runtimes import machine

    cfg = {k: v for k, v in cfg.items() if k not in ("id2label", "label2id", "_name_or_path", "transformers_version")}
    blob = json.dumps([TABLE_VERSION, cfg, target.model_dump(), bool(int8), head_points, neuron_points, repeats,
                       machine()],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_latency_table(dense: "nn.Module", target: "Target", *, int8: bool = False, head_points: int = HEAD_POINTS,
                        neuron_points: int = NEURON_POINTS, repeats: int = REPEATS,
                        progress: bool = False) -> LatencyTable:
    """Time the uniform cuts of the module doc against ``dense`` in ``target`` and return the table.

    ``head_points`` / ``neuron_points``: grid steps between one unit and the full count (:func:`grid`).
    Each point is one :func:`~autoprune.runtimes.measure_target` at batch ``batch_size`` (one warm-up
    round, ``repeats`` timed rounds, dense and cut interleaved): 11 for MiniLM-L6, 12 with int8.
    """
    import copy

    from tqdm.auto import tqdm

    from autoprune.models import get_adapter
    from autoprune.runtimes import machine, measure_target
    from autoprune.surgery import drop_layers, prune_structured

    t0 = time.perf_counter()
    target = _timed(target, repeats)
    key = table_key(dense, target, int8, head_points, neuron_points, repeats)
    adapter = get_adapter(dense)
    heads, neurons = adapter.shape(dense)
    n_layers, h_full, n_full = len(heads), max(heads), max(neurons)
    if len(set(heads)) > 1 or len(set(neurons)) > 1:
        raise ValueError(f"a latency table is built from an unpruned model; this one has heads {heads} and FFN "
                         f"widths {neurons}")
    h_grid, n_grid = grid(h_full, head_points), grid(n_full, neuron_points)
    cuts: list[tuple[str, int]] = ([("base", 0)] if int8 else []) + [("heads", h) for h in h_grid[:-1]] + \
        [("neurons", n) for n in n_grid[:-1]] + [("drop", n_layers // 2)]
    shares: dict[tuple[str, int], float] = {}
    dense_ms: list[float] = []
    for kind, count in tqdm(cuts, desc="latency table", disable=not progress):
        model = copy.deepcopy(dense).cpu().eval()
        if kind == "heads":
            prune_structured(model, kept_heads=[list(range(count))] * n_layers)
        elif kind == "neurons":
            prune_structured(model, kept_neurons=[list(range(count))] * n_layers)
        elif kind == "drop" and count:
            drop_layers(model, list(range(count)))
        rep = measure_target(dense, model, target, int8=int8)
        shares[(kind, count)] = rep["pruned_ms"] / rep["dense_ms"]
        dense_ms.append(rep["dense_ms"])
    base = shares[("base", 0)] if int8 else 1.0
    per_layer = {k: (v - base) / n_layers for k, v in shares.items() if k[0] in ("heads", "neurons")}
    dropped = n_layers // 2
    layer_share = (base - shares[("drop", dropped)]) / dropped if dropped else 0.0
    head_share = [per_layer[("heads", h)] for h in h_grid[:-1]] + [0.0]
    neuron_share = [per_layer[("neurons", n)] for n in n_grid[:-1]] + [0.0]
    table = LatencyTable(
        key=key, target=target.model_dump(), int8=bool(int8),
        num_layers=n_layers, heads=h_full, neurons=n_full,
        head_grid=h_grid, head_share=head_share, per_head=_slope(h_grid, head_share),
        neuron_grid=n_grid, neuron_share=neuron_share, per_neuron=_slope(n_grid, neuron_share),
        layer_share=layer_share, base=base, dense_ms=float(statistics.median(dense_ms)), machine=machine(),
        seconds=time.perf_counter() - t0, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    logger.info("latency table (%s%s): %d timings in %.0f s", target.describe(), ", int8" if int8 else "",
                len(cuts), table.seconds)
    return table


_TABLES: dict[str, LatencyTable] = {}


def latency_table(dense: "nn.Module", target: "Target", *, int8: bool = False, cache_dir: str | Path | None = None,
                  head_points: int = HEAD_POINTS, neuron_points: int = NEURON_POINTS, repeats: int = REPEATS,
                  progress: bool = False) -> LatencyTable:
    """The table for ``dense`` in ``target``: from this process's memory, else from ``cache_dir``
    (``<key>.json``), else built (:func:`build_latency_table`) and written there atomically."""
    key = table_key(dense, _timed(target, repeats), int8, head_points, neuron_points, repeats)
    if key in _TABLES:
        return _TABLES[key]
    path = Path(cache_dir) / f"{key}.json" if cache_dir is not None else None
    table = None
    if path is not None and path.is_file():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:  # a damaged cache file is rebuilt, not trusted
            logger.warning("latency table %s is unreadable (%s); building it again", path, exc)
    if table is None:
        table = build_latency_table(dense, target, int8=int8, head_points=head_points, neuron_points=neuron_points,
                                    repeats=repeats, progress=progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table.to_dict(), indent=1))
            tmp.replace(path)
    _TABLES[key] = table
    return table


__all__ = ["LatencyTable", "build_latency_table", "grid", "latency_table", "table_key"]
