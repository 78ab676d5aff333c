"""Fake trial functions for tests and the orchestration benchmark (importable on Ray workers).

A fake trial sleeps, reports a few evaluations through ``on_eval`` and returns a plausible
:class:`~autoprune.results.TrialResult` computed from the policy (more sparsity: faster, less accurate).

Example:
    >>> import functools
    >>> from autoprune.policy import PruningPolicy
    >>> fn = functools.partial(fake_trial, sleep=0.0)
    >>> r = fn(None, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5))
    >>> round(r.speedup, 2), r.accuracy < 0.9
    (1.67, True)
"""

from __future__ import annotations

import time
from typing import Any, Callable

from autoprune.results import TrialResult


class FakeStopped(Exception):
    """Raised by the fake when ``on_eval`` asks it to stop (stands in for ``autoprune.trial.TrialStopped``)."""

    def __init__(self, reason: str, history: list[list[float]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.history = history


def _stopped_cls() -> type[Exception]:
    try:
        from autoprune.trial import TrialStopped

        return TrialStopped
    except Exception:  # noqa: BLE001 - the real trial module may not exist yet
        return FakeStopped


def fake_result(policy: Any, accuracy: float, speedup: float, seconds: float = 0.0) -> TrialResult:
    p = policy.to_dict()
    return TrialResult(
        policy=p, accuracy=accuracy, macro_f1=accuracy - 0.01, per_class_recall=[accuracy, accuracy],
        dense_accuracy=0.9, dense_macro_f1=0.89, accuracy_drop=0.9 - accuracy, eval_split="validation", eval_n=100,
        speedup=speedup, latency_ms=10.0 / speedup, dense_latency_ms=10.0, speedup_b1=None, latency_b1_ms=None,
        dense_latency_b1_ms=None, speed_label="measured", flops=int(1e9 / speedup), dense_flops=int(1e9),
        flops_reduction=speedup, params=int(1e6 / speedup), dense_params=int(1e6), size_bytes=int(4e6 / speedup),
        dense_size_bytes=int(4e6), heads_per_layer=[], ffn_per_layer=[],
        weight_sparsity=0.0, retrain_steps=policy.retrain.steps, phase_seconds={"fake": seconds},
    )


def _mean_sparsity(policy: Any) -> float:
    vals = [v for lst in (policy.head_sparsity, policy.ffn_sparsity, policy.weight_sparsity) if lst for v in lst]
    return sum(vals) / len(vals) if vals else 0.0


def fake_trial(config: Any, policy: Any, *, on_eval: Callable[[int, float], bool] | None = None,
               save_dir: str | None = None, sleep: float = 0.1, fail_criterion: str | None = None,
               evals: int = 4, low_accuracy_criterion: str | None = None,
               crash_criterion: str | None = None, fault_dir: str | None = None,
               step_gain: float = 0.0) -> TrialResult:
    """Sleep ``sleep`` seconds in ``evals`` slices, calling ``on_eval`` after each; return fake metrics.

    ``step_gain``: accuracy a policy lacks without retraining, recovered as it retrains: the accuracy is
    lowered by ``step_gain * 50 / (50 + retrain steps)`` (rungs of a multi-fidelity search then differ).

    ``fail_criterion``: raise RuntimeError for policies with that criterion.
    ``low_accuracy_criterion``: report a very low accuracy for that criterion (so early stop triggers).
    ``crash_criterion``: kill the worker process (``os._exit``) for that criterion, like an OOM kill.
    ``fault_dir``: fault injection for ``scripts/chaos_search.py``. While it runs, the trial keeps a file
    ``<fault_dir>/running/<pid>`` (so a test can SIGKILL the worker mid-trial). Fault tokens: the first
    trial to take the file ``<fault_dir>/nan`` reports accuracy NaN (a diverged loss); the first to take
    ``<fault_dir>/raise`` raises ``RuntimeError("injected fault")``. A taken token stays with its trial
    (:func:`_claim`): Ray's retry of that trial, after its worker was killed, takes the same fault.
    """
    if crash_criterion is not None and policy.criterion == crash_criterion:
        import os

        os._exit(1)
    if fault_dir is not None:
        return _with_faults(fault_dir, config, policy, on_eval=on_eval, save_dir=save_dir, sleep=sleep,
                            fail_criterion=fail_criterion, evals=evals, low_accuracy_criterion=low_accuracy_criterion,
                            step_gain=step_gain)
    t0 = time.time()
    s = _mean_sparsity(policy)
    acc = 0.9 - 0.3 * s * s
    steps = policy.retrain.steps
    acc -= step_gain * 50 / (50 + steps)
    if low_accuracy_criterion is not None and policy.criterion == low_accuracy_criterion:
        acc = 0.3
    history: list[list[float]] = []
    for k in range(1, evals + 1):
        time.sleep(sleep / evals)
        if fail_criterion is not None and policy.criterion == fail_criterion and k == 1:
            raise RuntimeError(f"fake failure for criterion {policy.criterion}")
        if steps == 0:
            continue  # nothing retrains, nothing is checked mid-way (as in the real trial)
        step = max(1, steps * k // evals)
        history.append([step, acc])
        if on_eval is not None and on_eval(step, acc):
            raise _stopped_cls()(f"stopped at step {step}", history)
    speedup = 1.0 / (1.0 - 0.8 * s)
    res = fake_result(policy, acc, speedup, time.time() - t0)
    res.history = history
    return res


def _trial_key(policy: Any) -> str:
    """A short key of one trial's policy (its ``seed`` is the study seed plus the trial number, so two
    trials of a study never share a key, while Ray's retry of the same task does)."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps(policy.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _claim(fault_dir: str, name: str, key: str) -> bool:
    """Take the fault token ``fault_dir/name`` for the trial ``key``.

    The first trial renames the token to ``name.taken.<key>`` (``os.rename`` is atomic: exactly one
    trial wins); that trial keeps the fault on every later call, so when its worker is SIGKILLed after
    the claim and Ray retries the task, the retry fails the same way instead of running clean. Every
    other trial gets False.

    Example:
        >>> import tempfile, pathlib
        >>> d = tempfile.mkdtemp()
        >>> _ = (pathlib.Path(d) / "nan").touch()
        >>> _claim(d, "nan", "a"), _claim(d, "nan", "b"), _claim(d, "nan", "a")
        (True, False, True)
    """
    import os

    taken = os.path.join(fault_dir, f"{name}.taken.{key}")
    if os.path.exists(taken):
        return True
    try:
        os.rename(os.path.join(fault_dir, name), taken)
        return True
    except FileNotFoundError:
        return False


def _with_faults(fault_dir: str, config: Any, policy: Any, **kw: Any) -> TrialResult:
    import math
    import os

    run = os.path.join(fault_dir, "running")
    os.makedirs(run, exist_ok=True)
    mark = os.path.join(run, str(os.getpid()))
    with open(mark, "w") as fh:
        fh.write(policy.summary())
    key = _trial_key(policy)
    try:
        res = fake_trial(config, policy, **kw)
        if _claim(fault_dir, "raise", key):
            raise RuntimeError("injected fault (fault_dir/raise)")
        if _claim(fault_dir, "nan", key):
            res.accuracy = math.nan
        return res
    finally:
        try:
            os.remove(mark)
        except OSError:
            pass


def sleep_trial(config: Any, policy: Any, *, on_eval: Callable[[int, float], bool] | None = None,
                save_dir: str | None = None, sleep: float = 2.0) -> TrialResult:
    """Exactly ``sleep`` seconds of sleep and fixed metrics (the orchestration benchmark)."""
    time.sleep(sleep)
    return fake_result(policy, 0.85, 1.5, sleep)
