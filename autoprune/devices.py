"""Where a trial trains and evaluates: the torch device Ray gave its worker, and mixed precision there.

Example:
    >>> str(trial_device())
    'cpu'
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def trial_device() -> "torch.device":
    """The torch device a trial trains and evaluates on: ``cuda`` when Ray gave this worker a GPU
    (``gpus_per_trial > 0``), else ``cpu`` (a CPU trial on a GPU machine stays on CPU).

    Example:
        >>> str(trial_device())
        'cpu'
    """
    import torch

    try:
        import ray

        ids = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # noqa: BLE001 - not in a Ray worker: no GPU was assigned
        ids = []
    if ids and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: "torch.device | str") -> contextlib.AbstractContextManager[Any]:
    """bf16 mixed precision on CUDA (where the GPU supports bf16); nothing on CPU, whose float32
    numbers stay exactly as they were.

    Example:
        >>> with autocast("cpu"):
        ...     pass
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
