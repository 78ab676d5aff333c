"""Where trials run: the driver hands each trial to an executor as a :class:`TrialJob` and reads back a
plain outcome dict (see :func:`autoprune.search._dispatch.execute_trial`).

* :class:`RayExecutor` - one Ray task per trial (joins a cluster or starts a local Ray); a task whose
  worker dies is retried once, then reported as ``failed`` ("worker lost").
* :class:`InProcessExecutor` - runs each trial in the driver's own process when the driver waits for it,
  one at a time in submission order: no Ray, deterministic, for tests and debugging.

Every executor has the same small interface (:class:`Executor`): ``start``/``stop`` around a search,
``submit(job) -> handle``, ``wait(handles, timeout) -> finished handles``, ``result(handle) -> outcome``
(never raises), ``cancel(handle)``. The driver only ever calls these.

Example:
    >>> from autoprune.policy import PruningPolicy
    >>> from autoprune.search._fake import fake_trial
    >>> ex = InProcessExecutor()
    >>> pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5).to_dict()
    >>> cfg = {"data": {"files": {"train": "t.tsv", "validation": "v.tsv"}}}
    >>> h = ex.submit(TrialJob(number=0, config=cfg, policy=pol, trial_fn=fake_trial))
    >>> ex.wait([h], timeout=1.0) == [h], ex.result(h)["status"]
    (True, 'complete')
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Protocol

log = logging.getLogger("autoprune.search")


@dataclass(frozen=True)
class TrialJob:
    """One trial to run, as plain data (it crosses process boundaries).

    ``config``: the run config dict; ``policy``: the policy dict; ``floor``: the accuracy floor of the
    worker-side early stop (None: no early stop); ``early_stop``: its ``margin`` and ``min_fraction``;
    ``num_cpus`` / ``num_gpus``: CPUs and GPUs (fractions allowed) reserved for the trial; ``save_dir``: where to save the pruned model (or None);
    ``trial_fn``: the trial function (None: :func:`autoprune.trial.run_trial`).
    """

    number: int
    config: dict[str, Any]
    policy: dict[str, Any]
    floor: float | None = None
    early_stop: dict[str, float] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    save_dir: str | None = None
    trial_fn: Callable[..., Any] | None = None


class Executor(Protocol):
    """What the driver needs from a place that runs trials."""

    def start(self, *, num_cpus: float, run_dir: str | Path) -> None:
        """Get ready to run trials that need ``num_cpus`` CPUs together."""

    def stop(self) -> None:
        """Release what ``start`` took; trials still running are dropped."""

    def submit(self, job: TrialJob) -> Hashable:
        """Start ``job``; returns a handle for ``wait``/``result``/``cancel``."""

    def wait(self, handles: list[Hashable], timeout: float) -> list[Hashable]:
        """The handles among ``handles`` whose trial has finished (at least one, unless ``timeout``
        seconds passed first)."""

    def result(self, handle: Hashable) -> dict[str, Any]:
        """The outcome of a finished trial (``status``: complete | pruned | failed); never raises."""

    def cancel(self, handle: Hashable) -> None:
        """Forget a trial; its outcome, if it still comes, is dropped."""


@contextlib.contextmanager
def running(executor: Executor, *, num_cpus: float, run_dir: str | Path) -> Any:
    """``start`` the executor, yield it, ``stop`` it however the block ends."""
    executor.start(num_cpus=num_cpus, run_dir=run_dir)
    try:
        yield executor
    finally:
        executor.stop()


def worker_lost(exc: BaseException) -> dict[str, Any]:
    """The outcome of a trial whose worker died (after Ray's one retry), was OOM-killed or cancelled.

    Example:
        >>> worker_lost(RuntimeError("node died"))["reason"]
        'worker lost (retried once): RuntimeError: node died'
    """
    msg = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {msg[0] if msg else ''}".strip()
    if "OutOfMemory" in type(exc).__name__ or "memory" in reason.lower():
        reason = f"out of memory: {reason}"
    return {"status": "failed", "reason": f"worker lost (retried once): {reason}", "history": []}


class RayExecutor:
    """Each trial is a Ray task reserving ``job.num_cpus`` CPUs (``max_retries=1``: a dead worker's task
    runs once more). ``start`` uses the Ray this process already runs, joins ``address`` (else
    ``RAY_ADDRESS``), or starts a quiet local Ray on 127.0.0.1 (:func:`~autoprune.search._dispatch.ray_session`).
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._session = contextlib.ExitStack()
        self._remote: Any = None

    def start(self, *, num_cpus: float, run_dir: str | Path) -> None:
        from autoprune.search._dispatch import ray_session

        self._session.enter_context(ray_session(address=self.address, num_cpus=num_cpus, run_dir=run_dir))

    def stop(self) -> None:
        self._session.close()

    def submit(self, job: TrialJob) -> Any:
        import ray

        from autoprune.search._dispatch import execute_trial

        if self._remote is None:
            self._remote = ray.remote(execute_trial)
        from autoprune.runtimes import ray_trial_options

        return self._remote.options(**ray_trial_options(job.num_cpus, job.num_gpus), max_retries=1,
                                    name=f"autoprune-trial-{job.number}").remote(
            job.trial_fn, job.config, job.policy, job.floor, job.early_stop, job.number, job.save_dir)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        import ray

        ready, _ = ray.wait(list(handles), num_returns=1, timeout=timeout)
        return list(ready)

    def result(self, handle: Any) -> dict[str, Any]:
        import ray

        try:
            return dict(ray.get(handle))
        except Exception as exc:  # noqa: BLE001 - worker died twice, task cancelled, OOM-killed...
            return worker_lost(exc)

    def cancel(self, handle: Any) -> None:
        """Drop the reference only: ``ray.cancel`` racing a task that just finished crashes the Ray 2.60
        driver. A local Ray is shut down by ``stop`` anyway; on a cluster the task's result is dropped."""


class InProcessExecutor:
    """Runs each submitted trial in this process, one at a time, when the driver waits for it.

    The driver still asks ``trials_in_flight`` trials before it tells the first, as with Ray, so the
    sampler, the duplicate check and the interrupt handling see the same sequence; only the timing
    differs (``wait`` returns after one trial, whatever its ``timeout``). Torch's intra-op thread count
    is restored after each trial, so a trial's ``torch_threads`` does not leak into the caller.
    """

    def __init__(self) -> None:
        self._pending: dict[int, TrialJob] = {}
        self._done: dict[int, dict[str, Any]] = {}
        self._next = 0
        self.submitted: list[TrialJob] = []  # every job, in order (what a test inspects)

    def start(self, *, num_cpus: float, run_dir: str | Path) -> None:
        log.info("running trials in this process (no Ray)")

    def stop(self) -> None:
        self._pending.clear()
        self._done.clear()

    def submit(self, job: TrialJob) -> int:
        handle = self._next
        self._next += 1
        self._pending[handle] = job
        self.submitted.append(job)
        return handle

    def wait(self, handles: list[int], timeout: float) -> list[int]:
        ready = [h for h in handles if h in self._done]
        if ready:
            return ready
        for h in handles:
            if h in self._pending:
                self._done[h] = self._run(self._pending.pop(h))
                return [h]
        return []

    def result(self, handle: int) -> dict[str, Any]:
        return self._done.pop(handle)

    def cancel(self, handle: int) -> None:
        self._pending.pop(handle, None)
        self._done.pop(handle, None)

    @staticmethod
    def _run(job: TrialJob) -> dict[str, Any]:
        import torch

        from autoprune.search._dispatch import execute_trial

        threads = torch.get_num_threads()
        try:
            return execute_trial(job.trial_fn, job.config, job.policy, job.floor, job.early_stop, job.number,
                                 save_dir=job.save_dir)
        finally:
            torch.set_num_threads(threads)
