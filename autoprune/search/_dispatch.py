"""Ray side of a search: start or join Ray, and run one trial as a remote task.

A task gets plain data only (config dict, policy dict, accuracy floor) and returns a plain
dict (``status``: complete | pruned | failed, ``result``, ``reason``, ``history``, ``node_id``).
Workers never touch the study storage. A task whose worker dies is retried once by Ray
(``max_retries=1``); application errors are not retried, they come back as ``failed``.

Example:
    >>> rule = EarlyStopRule(floor=0.80, budget_steps=100, margin=0.02, min_fraction=0.5)
    >>> rule(20, 0.5), rule(60, 0.79), rule(60, 0.70)
    (False, False, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("autoprune.search")

#: longest Ray temp dir we use as is; Ray appends ~60 characters and a Unix socket path
#: may not exceed ~107 characters
_MAX_TEMP_DIR = 45


class EarlyStopRule:
    """The worker-side early-stop decision for two-objective studies (no ``trial.report``).

    Stop when at least ``min_fraction`` of the retraining budget has run and the validation
    accuracy is still below ``floor - margin``. Every call is kept in ``history``.
    """

    def __init__(self, floor: float | None, budget_steps: int, margin: float = 0.02, min_fraction: float = 0.5) -> None:
        self.floor = floor
        self.budget_steps = max(int(budget_steps), 1)
        self.margin = margin
        self.min_fraction = min_fraction
        self.history: list[list[float]] = []
        self.reason: str | None = None

    def __call__(self, step: int, acc: float) -> bool:
        self.history.append([int(step), float(acc)])
        if self.floor is None or self.reason is not None:
            return self.reason is not None
        if step >= self.min_fraction * self.budget_steps and acc < self.floor - self.margin:
            self.reason = (f"validation accuracy {acc:.4f} at step {step}/{self.budget_steps} is below the floor "
                           f"{self.floor:.4f} - margin {self.margin:.3f}")
            return True
        return False


def execute_trial(trial_fn: Callable[..., Any] | None, config: dict[str, Any], policy: dict[str, Any],
                  floor: float | None, early_stop: dict[str, float], number: int,
                  save_dir: str | None = None) -> dict[str, Any]:
    """Run one trial in the current process and describe the outcome as plain data (the Ray task body)."""
    t0 = time.time()
    out: dict[str, Any] = {"number": number, "host": socket.gethostname(), "pid": os.getpid(), "node_id": None}
    try:
        import ray

        if ray.is_initialized():
            out["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - node id is informative only
        pass
    rule = EarlyStopRule(floor, policy.get("retrain", {}).get("steps", 1), **early_stop)
    try:
        from autoprune.config import RunConfig
        from autoprune.policy import PruningPolicy

        cfg = RunConfig.model_validate(config)
        pol = PruningPolicy.model_validate(policy)
        if trial_fn is None:
            from autoprune.trial import run_trial as trial_fn  # noqa: N806
        res = trial_fn(cfg, pol, on_eval=rule, save_dir=save_dir)
        res = res.to_dict() if hasattr(res, "to_dict") else dict(res)
        vals = [res.get("accuracy"), res.get("speedup")]
        if any(v is None or not math.isfinite(float(v)) for v in vals):
            out.update(status="failed", reason=f"trial returned non-finite objectives {vals}")
        else:
            out.update(status="complete", result=res)
    except MemoryError:
        out.update(status="failed", reason="out of memory (MemoryError) in the trial")
    except BaseException as exc:  # noqa: BLE001 - every trial problem is recorded, the search goes on
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if rule.reason is not None or type(exc).__name__ == "TrialStopped":
            out.update(status="pruned", reason=rule.reason or getattr(exc, "reason", str(exc)))
            hist = getattr(exc, "history", None)
            if hist:
                out["history"] = [list(h) for h in hist]
        else:
            msg = str(exc) or type(exc).__name__
            if "out of memory" in msg.lower():
                msg = f"out of memory: {msg}"
            out.update(status="failed", reason=f"{type(exc).__name__}: {msg}",
                       traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])
    out.setdefault("history", rule.history)
    out["seconds"] = time.time() - t0
    return out


_remote_cache: dict[str, Any] = {}


def submit(trial_fn: Callable[..., Any] | None, config: dict[str, Any], policy: dict[str, Any], floor: float | None,
           early_stop: dict[str, float], number: int, num_cpus: float, save_dir: str | None = None,
           num_gpus: float = 0) -> Any:
    """Submit one trial as a Ray task (``num_cpus`` CPUs, ``num_gpus`` GPUs); returns its ObjectRef."""
    import ray

    from autoprune.runtimes import ray_trial_options

    fn = _remote_cache.get("execute")
    if fn is None:
        fn = _remote_cache["execute"] = ray.remote(execute_trial)
    return fn.options(**ray_trial_options(num_cpus, num_gpus), max_retries=1, name=f"autoprune-trial-{number}").remote(
        trial_fn, config, policy, floor, early_stop, number, save_dir)


def ray_temp_dir(run_dir: str | Path) -> str:
    """``<run_dir>/ray_tmp`` (absolute) or, when that is too long for Unix sockets, a short /tmp folder."""
    d = Path(run_dir).resolve() / "ray_tmp"
    if len(str(d)) <= _MAX_TEMP_DIR:
        return str(d)
    h = hashlib.sha1(str(d).encode()).hexdigest()[:8]
    return str(Path(tempfile.gettempdir()) / f"ap_ray_{h}")


def _auth_for_join() -> None:
    """Ray 2.60 clusters use token authentication by default, but a client only sends its token when
    ``RAY_AUTH_MODE=token``; without it, joining hangs on "InvalidAuthToken" retries. When the mode is
    unset and a token is at hand, turn it on (a token client also joins a cluster without auth)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import; refresh it the way ray.init does for a new cluster
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        except Exception as exc:  # noqa: BLE001 - other Ray versions: the environment variable suffices
            log.debug("could not refresh Ray's auth config: %s", exc)
        log.info("RAY_AUTH_MODE=token (a Ray auth token is available) to join the cluster")


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep a local Ray on 127.0.0.1. On Linux Ray ignores ``_node_ip_address="127.0.0.1"`` (it resolves
    localhost to the machine's reachable IP) and its servers listen on all interfaces; with cluster mode
    off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the macOS/Windows default) the node IP and every Ray
    server (GCS, raylet, agents, workers) are on 127.0.0.1. The variable is inherited by the processes
    Ray starts; both are restored afterwards so a later join of a real cluster is unaffected."""
    var = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env = os.environ.get(var)
    os.environ[var] = "0"
    consts: Any = None
    try:
        from ray._private import ray_constants as consts

        old_const = consts.ENABLE_RAY_CLUSTER
        consts.ENABLE_RAY_CLUSTER = False
    except Exception:  # noqa: BLE001 - other Ray versions: the environment variable is what counts
        consts = None
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old_env
        if consts is not None:
            consts.ENABLE_RAY_CLUSTER = old_const


@contextlib.contextmanager
def ray_session(*, address: str | None, num_cpus: float, run_dir: str | Path) -> Iterator[bool]:
    """Use the Ray this process already runs, join ``address``/``RAY_ADDRESS``, or start a quiet local one.

    Yields True when this call started Ray (and will shut it down on exit). A local Ray keeps
    Ray 2.x token authentication (the token lives in ``~/.ray/auth_token``); joining a cluster
    needs the cluster's token in ``RAY_AUTH_TOKEN`` or that file.
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kw: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=False,
                              logging_level=logging.ERROR)
    local = contextlib.ExitStack()
    try:
        if address:
            log.info("joining Ray cluster at %s", address)
            _auth_for_join()
            ray.init(address=address, **kw)
        else:
            tmp = ray_temp_dir(run_dir)
            Path(tmp).mkdir(parents=True, exist_ok=True)
            log.info("starting a local Ray with %s CPUs on 127.0.0.1 (temp dir %s)", num_cpus, tmp)
            local.enter_context(_loopback_only())
            ray.init(address="local", num_cpus=max(int(math.ceil(num_cpus)), 1), _temp_dir=tmp, _node_ip_address="127.0.0.1", **kw)
    except Exception as exc:  # noqa: BLE001
        from autoprune.errors import StudyError

        where = f"the Ray cluster at {address}" if address else "a local Ray"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and the cluster's token in "
                "RAY_AUTH_TOKEN (or ~/.ray/auth_token)") if address and "auth" in str(exc).lower() else ""
        local.close()
        raise StudyError(f"cannot start or join {where}: {msg}{hint}") from None
    try:
        yield True
    finally:
        ray.shutdown()
        local.close()
