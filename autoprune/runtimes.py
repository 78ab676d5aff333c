"""Where speed is measured: runtimes, devices and input shapes (measurement targets), and trials on GPUs.

A :class:`Target` names a runtime (``torch``: eager PyTorch; ``onnxruntime``: the model exported to
ONNX and run in an ``InferenceSession``), a device (``cpu`` or ``cuda``), a thread count and one
input shape. :func:`measure_target` times the dense and the pruned model **in the same runtime**,
interleaved after warm-up (:func:`autoprune.measure.interleaved_times`), and records the medians,
the quartiles of each side and of the per-round speedup, so the spread is on record. A run
config lists its targets under ``measure.targets`` and names the search's speed objective with
``measure.objective`` (see :class:`autoprune.config.MeasureConfig`).

:func:`check_targets` raises one :class:`TargetError` for a runtime that is not installed or a
``cuda`` target without a visible GPU; the search runs it before any study is created.
:func:`measure_targets` runs every target, on this process or, when ``measure.resource`` names a
Ray custom resource, as a Ray task pinned to a node that carries it (the deployment hardware).

GPUs: :func:`ray_trial_options` maps ``cpus_per_trial`` / ``gpus_per_trial`` (fractions allowed) to
Ray task options, :func:`check_gpus` is one clear error when GPUs are asked for and there are none
(:mod:`autoprune.devices` picks the torch device a trial trains on and its mixed precision).

Example:
    >>> t = Target(runtime="onnxruntime", batch_size=1)
    >>> t.name, t.threads, t.seq_len
    ('onnxruntime-cpu', 1, 64)
    >>> ray_trial_options(1, 0.25)
    {'num_cpus': 1, 'num_gpus': 0.25}
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import platform
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence


from autoprune.config import Target
from autoprune.errors import AutopruneError

if TYPE_CHECKING:
    import torch.nn as nn

    from autoprune.config import MeasureConfig
    from autoprune.data import Split
    from autoprune.results import EvalMetrics, SpeedReport

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime")
#: share of the custom resource one measurement task asks for (many may run side by side; the
#: resource pins them to a node, it does not ration them)
RESOURCE_SHARE = 0.01


class TargetError(AutopruneError):
    """A measurement target cannot run here: its runtime is not installed, or it asks for a missing device."""


# ----------------------------------------------------------------------------- checks
def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def check_targets(targets: Sequence[Target], *, devices: bool = True) -> None:
    """Raise :class:`TargetError` when a target cannot run in this environment.

    A runtime must be importable (``onnxruntime`` also needs ``onnx`` for the export); with
    ``devices`` a ``cuda`` target needs a GPU visible to torch (and, in ONNX Runtime, its CUDA
    execution provider). Pass ``devices=False`` when the targets are measured on other machines
    (a Ray cluster); the cluster's devices are checked by :func:`check_cluster`.

    Example:
        >>> check_targets([Target()])  # eager PyTorch on CPU always runs
        >>> check_targets([Target(device="cuda")], devices=False)
    """
    import torch

    for t in targets:
        where = f"measure target '{t.name}'"
        if t.runtime == "onnxruntime":
            ort = _onnxruntime()
            if ort is None or not _has("onnx"):
                missing = "onnxruntime" if ort is None else "onnx"
                gpu = " (onnxruntime-gpu for device cuda)" if t.device == "cuda" else ""
                raise TargetError(f"{where}: runtime onnxruntime needs the '{missing}' package, which is not "
                                  f"installed; run: pip install 'autoprune[onnx]'{gpu}, or remove the target "
                                  f"from measure.targets")
        if devices and t.device == "cuda":
            if not torch.cuda.is_available():
                raise TargetError(f"{where}: device cuda, but no CUDA GPU is visible here "
                                  f"(torch.cuda.is_available() is False; torch {torch.__version__}); "
                                  f"measure on cpu, install a CUDA build of torch, or pin measurement to a GPU node "
                                  f"with measure.resource")
            if t.runtime == "onnxruntime" and "CUDAExecutionProvider" not in _onnxruntime().get_available_providers():
                raise TargetError(f"{where}: onnxruntime has no CUDAExecutionProvider here (providers "
                                  f"{_onnxruntime().get_available_providers()}); install onnxruntime-gpu instead of "
                                  f"onnxruntime")


INT8_SKIPPED = "int8 runs in ONNX Runtime only"


def check_int8(measure: "MeasureConfig", where: str) -> None:
    """Refuse int8 policies when the speed objective is not an ``onnxruntime`` target: int8 is ONNX
    Runtime dynamic int8 (:mod:`autoprune.quantize`), and a torch speedup of it cannot be measured."""
    objective = measure.objective_target()
    if objective.runtime != "onnxruntime":
        raise TargetError(
            f"{where}: int8 policies (quantize: true) run in ONNX Runtime, but the speed objective "
            f"'{objective.name}' is {objective.runtime}; add an onnxruntime target to measure.targets and name it in "
            f"measure.objective (e.g. targets: [{{name: ort, runtime: onnxruntime}}], objective: ort), or leave int8 "
            f"out (quantize: false)")


def check_gpus(gpus_per_trial: float) -> None:
    """Raise :class:`TargetError` when ``gpus_per_trial > 0`` but there is no GPU to give a trial.

    With Ray running, the cluster's nodes are asked (a trial's share must fit on one node); else
    torch's view of this machine. ``0`` (the default) checks nothing.

    Example:
        >>> check_gpus(0)
    """
    if not gpus_per_trial or gpus_per_trial <= 0:
        return
    per_node = _ray_gpus_per_node()
    if per_node is None:
        import torch

        per_node = [float(torch.cuda.device_count())] if torch.cuda.is_available() else []
        where = "this machine"
    else:
        where = "the Ray cluster"
    most = max(per_node, default=0.0)
    if most <= 0:
        raise TargetError(f"gpus_per_trial is {gpus_per_trial:g} but {where} has no GPU; set gpus_per_trial: 0 "
                          f"to train trials on CPU, or join a Ray cluster with GPU nodes (--address)")
    if gpus_per_trial > most:
        raise TargetError(f"gpus_per_trial is {gpus_per_trial:g} but the largest node of {where} has {most:g} "
                          f"GPU{'s' * (most != 1)}; a trial runs on one node, so give at most {most:g}")


def _ray_gpus_per_node() -> list[float] | None:
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return [float(n.get("Resources", {}).get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def check_before_study(measure: "MeasureConfig", gpus_per_trial: float = 0.0, *, joining_cluster: bool) -> None:
    """Everything about measurement and devices that can be checked before a study exists.

    The targets' runtimes always; devices and GPUs only when the search runs on this machine
    (``joining_cluster`` False), since a cluster's nodes are checked once Ray is up (:func:`check_cluster`).
    """
    targets = measure.resolved_targets()
    local = not joining_cluster and not measure.resource
    check_targets(targets, devices=local)
    if not joining_cluster:
        check_gpus(gpus_per_trial)


def check_cluster(measure: "MeasureConfig", gpus_per_trial: float = 0.0) -> None:
    """With Ray running: GPUs for ``gpus_per_trial``, and ``measure.resource`` on some node.

    A resource no node carries would leave every measurement task pending forever; this is the
    error instead of that hang.
    """
    import ray

    check_gpus(gpus_per_trial)
    name = measure.resource
    if name:
        have = ray.cluster_resources()
        if have.get(name, 0) <= 0:
            custom = sorted(k for k in have if k not in ("CPU", "GPU", "memory", "object_store_memory")
                            and not k.startswith("node:") and not k.startswith("accelerator_type:"))
            raise TargetError(f"measure.resource is '{name}' but no node of the Ray cluster carries that custom "
                              f"resource (custom resources: {', '.join(custom) or 'none'}); start the measurement "
                              f"node with: ray start --address ... --resources '{{\"{name}\": 1}}'")
    if any(t.device == "cuda" for t in measure.resolved_targets()) and not name and gpus_per_trial <= 0:
        raise TargetError("a measure target has device cuda but trials get no GPU (gpus_per_trial is 0) and "
                          "measurement is not pinned to a GPU node (measure.resource); set one of them")


# ----------------------------------------------------------------------------- GPUs for trials
def ray_trial_options(cpus_per_trial: float, gpus_per_trial: float = 0.0) -> dict[str, float]:
    """Ray task options of one trial: its CPUs and, when asked for, its (possibly fractional) GPU share.

    Example:
        >>> ray_trial_options(2)
        {'num_cpus': 2}
    """
    opts: dict[str, float] = {"num_cpus": cpus_per_trial}
    if gpus_per_trial and gpus_per_trial > 0:
        opts["num_gpus"] = gpus_per_trial
    return opts


# ----------------------------------------------------------------------------- measurement
def _summary(prefix: str, dense: list[float], pruned: list[float]) -> dict[str, float]:
    from autoprune.measure import spread

    dq1, dmed, dq3 = spread(dense)
    pq1, pmed, pq3 = spread(pruned)
    rq1, _, rq3 = spread([d / p for d, p in zip(dense, pruned)])  # each round's own ratio
    return {f"dense_ms{prefix}": dmed, f"dense_iqr_ms{prefix}": dq3 - dq1, f"pruned_ms{prefix}": pmed,
            f"pruned_iqr_ms{prefix}": pq3 - pq1, f"speedup{prefix}": dmed / pmed,
            f"speedup_q1{prefix}": rq1, f"speedup_q3{prefix}": rq3}


def _torch_timer(dense: "nn.Module", pruned: "nn.Module", t: Target, int8: bool,
                 onnx_file: Path | None = None) -> Iterator[tuple[str, list]]:
    import torch

    from autoprune.measure import interleaved_times, random_batch

    if int8:
        raise TargetError(f"measure target '{t.name}': torch has no int8 path in autoprune (int8 policies run in "
                          f"ONNX Runtime); measure them in an onnxruntime target")
    dev = torch.device(t.device)
    if dev.type == "cuda":
        dense, pruned = copy.deepcopy(dense).to(dev), copy.deepcopy(pruned).to(dev)
    dense.eval()
    pruned.eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    vocab = int(getattr(dense.config, "vocab_size", 1000))
    prev = torch.get_num_threads()
    torch.set_num_threads(t.threads)
    try:
        for suffix, bs, seed in (("", t.batch_size, 0), ("_b1", 1, 1)):
            if suffix and not t.batch1:
                continue
            batch = {k: v.to(dev) for k, v in random_batch(vocab, bs, t.seq_len, seed=seed).items()}
            with torch.inference_mode():
                td, tp = interleaved_times([lambda: dense(**batch), lambda: pruned(**batch)], warmup=t.warmup,
                                           repeats=t.repeats, sync=sync)
            yield suffix, [td, tp]
    finally:
        torch.set_num_threads(prev)


def _cpu(model: "nn.Module") -> "nn.Module":
    dev = next(model.parameters()).device
    return model if dev.type == "cpu" else copy.deepcopy(model).cpu()


#: the dense model's ONNX export per process: a worker times every policy against the same dense model
_DENSE_ONNX: "weakref.WeakKeyDictionary[Any, tuple[Any, Any, Path]]" = weakref.WeakKeyDictionary()


def _dense_onnx(dense: "nn.Module") -> Path:
    """``dense`` exported to ONNX once per process and reused; exported again when its weights changed
    (a parameter's storage or in-place version counter) or for another model object."""
    from autoprune.onnx_export import export_onnx

    stamp = tuple((p.data_ptr(), p._version) for p in dense.parameters())
    hit = _DENSE_ONNX.get(dense)
    if hit is not None and hit[0] == stamp and hit[2].is_file():
        return hit[2]
    tmp = tempfile.TemporaryDirectory(prefix="autoprune_dense_onnx_")  # removed with its cache entry
    path = export_onnx(_cpu(dense), Path(tmp.name) / "dense.onnx")
    _DENSE_ONNX[dense] = (stamp, tmp, path)
    return path


def _ort_timer(dense: "nn.Module", pruned: "nn.Module", t: Target, int8: bool,
               onnx_file: Path | None = None) -> Iterator[tuple[str, list]]:
    from autoprune.onnx_export import export_onnx, onnx_inputs, onnx_session
    from autoprune.measure import interleaved_times, random_batch

    vocab = int(getattr(dense.config, "vocab_size", 1000))
    with tempfile.TemporaryDirectory(prefix="autoprune_ort_") as tmp:
        d_path = _dense_onnx(dense)
        p_path = onnx_file or export_onnx(_cpu(pruned), Path(tmp) / "pruned.onnx", int8=int8)
        sd = onnx_session(d_path, threads=t.threads, device=t.device)
        sp = onnx_session(p_path, threads=t.threads, device=t.device)
        names = onnx_inputs(dense)[1]
        for suffix, bs, seed in (("", t.batch_size, 0), ("_b1", 1, 1)):
            if suffix and not t.batch1:
                continue
            b = random_batch(vocab, bs, t.seq_len, seed=seed)
            b["token_type_ids"] = b["input_ids"] * 0
            feed = {n: b[n].numpy() for n in names}
            td, tp = interleaved_times([lambda: sd.run(["logits"], feed), lambda: sp.run(["logits"], feed)],
                                       warmup=t.warmup, repeats=t.repeats)
            yield suffix, [td, tp]


def measure_target(dense: "nn.Module", pruned: "nn.Module", target: Target, *, int8: bool = False,
                   onnx_file: str | Path | None = None) -> dict[str, Any]:
    """Time ``dense`` against ``pruned`` (both float models) in ``target``'s runtime, interleaved.

    ``int8`` times the pruned model as ONNX Runtime dynamic int8 of the exported model against the
    float dense model of the same runtime (``onnxruntime`` targets only: torch has no int8 path).
    ``onnx_file``: the pruned model already exported (and, with ``int8``, quantized) to this ONNX file,
    timed as it is in ``onnxruntime`` targets instead of exporting ``pruned`` again.
    Returns plain data: the target's settings, ``dense_ms`` / ``pruned_ms`` (medians) with their
    interquartile ranges, ``speedup`` (ratio of the medians) with the quartiles ``speedup_q1`` /
    ``speedup_q3`` of the per-round ratios, and the same with ``_b1`` when the target also times
    batch 1.

    Example (a tiny model; see tests/test_runtimes.py):
        >>> # measure_target(dense, pruned, Target(runtime="onnxruntime"))["speedup"]
    """
    check_targets([target])
    timer = _ort_timer if target.runtime == "onnxruntime" else _torch_timer
    out: dict[str, Any] = {**target.model_dump(), "int8": bool(int8)}
    for suffix, (td, tp) in timer(dense, pruned, target, int8, None if onnx_file is None else Path(onnx_file)):
        out.update(_summary(suffix, td, tp))
    logger.info("%s: dense %.2f ms, pruned%s %.2f ms -> %.2fx (per-round quartiles %.2f-%.2f)", target.describe(),
                out["dense_ms"], " int8" if int8 else "", out["pruned_ms"], out["speedup"], out["speedup_q1"],
                out["speedup_q3"])
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where speed is measured: CPU model, CPUs and runtime versions (recorded with every trial's
    speed, and part of a latency table's cache key). Read once per process."""
    return dict(_machine())


@functools.cache
def _machine() -> dict[str, Any]:
    import torch

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": _cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": ort}


def _measure_all(dense: "nn.Module", pruned: "nn.Module", targets: list[dict[str, Any]], int8: bool,
                 onnx_file: str | Path | None = None) -> dict[str, Any]:
    """Body of the pinned measurement task (plain data in, plain data out)."""
    results = {}
    for t in targets:  # an int8 model has no torch form: its torch targets are recorded as skipped
        if int8 and t["runtime"] == "torch":
            results[t["name"]] = {**t, "int8": True, "skipped": INT8_SKIPPED}
        else:
            results[t["name"]] = measure_target(dense, pruned, Target.model_validate(t), int8=int8, onnx_file=onnx_file)
    placement: dict[str, Any] = {}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            placement = {"node_id": ctx.get_node_id(), "resources": dict(ctx.get_assigned_resources())}
    except Exception:  # noqa: BLE001 - where it ran is informative only
        pass
    return {"targets": results, "placement": placement, "machine": machine()}


def measure_targets(dense: "nn.Module", pruned: "nn.Module", measure: "MeasureConfig", *,
                    int8: bool = False, onnx_file: str | Path | None = None) -> dict[str, Any]:
    """Measure every target of a run config's ``measure`` section.

    Returns ``{"targets": {name: measure_target(...)}, "objective": name, "placement": {...}}``.
    With ``measure.resource`` and Ray running, the timing runs as one Ray task that asks for
    ``RESOURCE_SHARE`` of that custom resource (and the largest target's threads as CPUs), so it
    lands on a node that carries it; ``placement`` records the node and the resources Ray assigned.
    Without Ray the targets are timed here (the resource only pins work inside a Ray search), and
    ``onnx_file`` (the pruned model's ONNX file, see :func:`measure_target`) is used; a pinned task,
    perhaps on another node, exports the model it receives.
    """
    targets = [t.model_dump() for t in measure.resolved_targets()]
    name = measure.resource
    ray = None
    if name:
        try:
            import ray as _ray

            ray = _ray if _ray.is_initialized() else None
        except ImportError:
            ray = None
        if ray is None:
            logger.warning("measure.resource '%s' pins measurement only inside a Ray search; timing here", name)
    if ray is not None:
        cpus = max(t["threads"] for t in targets)
        gpus = 1 if any(t["device"] == "cuda" for t in targets) else 0
        task = ray.remote(_measure_all).options(resources={name: RESOURCE_SHARE}, num_cpus=cpus, num_gpus=gpus,
                                                max_retries=1, name="autoprune-measure")
        out = ray.get(task.remote(dense, pruned, targets, int8))
    else:
        out = _measure_all(dense, pruned, targets, int8, onnx_file)
    out["objective"] = measure.objective_target().name
    return out


def speed_report(rep: dict[str, Any]) -> "SpeedReport":
    """The :class:`~autoprune.results.SpeedReport` of one target's numbers (the trial's headline speed)."""
    from autoprune.results import SpeedReport

    return SpeedReport(batch_size=rep["batch_size"], seq_len=rep["seq_len"], threads=rep["threads"],
                       repeats=rep["repeats"], dense_ms=rep["dense_ms"], pruned_ms=rep["pruned_ms"],
                       speedup=rep["speedup"], dense_ms_b1=rep.get("dense_ms_b1"),
                       pruned_ms_b1=rep.get("pruned_ms_b1"), speedup_b1=rep.get("speedup_b1"),
                       speedup_q1=rep.get("speedup_q1"), speedup_q3=rep.get("speedup_q3"), rounds=rep.get("repeats"))


# ----------------------------------------------------------------------------- exported models
def onnx_accuracy(onnx_path: str | Path, split: "Split", *, pad_id: int, num_labels: int, batch_size: int = 128,
                  threads: int = 1) -> "EvalMetrics":
    """Score an exported ONNX model on a tokenised split as :func:`autoprune.measure.evaluate_split`
    scores a torch model (length-sorted batches of ``batch_size``; one sentence at a time for an int8
    file, whose activation scales span the batch): the number to hold against the trial's accuracy."""
    from autoprune.measure import evaluate_split
    from autoprune.onnx_export import OnnxClassifier

    return evaluate_split(OnnxClassifier(onnx_path, threads=threads), split, batch_size=batch_size, pad_id=pad_id,
                          num_labels=num_labels)


__all__ = ["RESOURCE_SHARE", "RUNTIMES", "Target", "TargetError", "check_before_study", "check_cluster",
           "check_gpus", "check_targets", "machine", "measure_target", "measure_targets",
           "onnx_accuracy", "ray_trial_options", "speed_report"]
