"""The search driver: one process runs the Optuna study with ask/tell and keeps
``trials_in_flight`` Ray tasks running.

Resume: the storage is the only record. On start the driver takes the study lease, marks
trials left RUNNING by a dead driver FAIL (``orphaned``) and re-enqueues their params, then
asks for new trials until ``n_trials`` trials are finished (COMPLETE, PRUNED, or FAIL that is
not an orphan re-run elsewhere).

Example (a fake trial function, as in the tests):
    >>> import functools
    >>> from autoprune.search import load_search_space, run_search
    >>> from autoprune.search._fake import fake_trial
    >>> space = load_search_space("search_spaces/quickstart.yaml")  # doctest: +SKIP
    >>> study = run_search(space, trial_fn=functools.partial(fake_trial, sleep=0.1),
    ...                    dense_metrics={"accuracy": 0.9}, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from autoprune import _study as S
from autoprune.errors import ConfigError, StudyError
from autoprune.search._space import SearchSpace, load_search_space
from autoprune.search._storage import ATTR_LEASE, Lease, default_storage, get_storage, mask_url, open_study, study_names

log = logging.getLogger("autoprune.search")

T_ORPHANED = S.T_ORPHANED    # FAIL trial left RUNNING by a dead driver (not counted; re-enqueued)
T_RETRY_OF = "retry_of"      # number of the orphaned trial this one re-runs
T_DUPLICATE = S.T_DUPLICATE  # FAIL trial whose policy was already tried (not counted, never run)
T_NODE = "node_id"
T_WORKER = "worker"


def make_sampler(space: SearchSpace, offset: int = 0) -> Any:
    """The Optuna sampler of the space; ``offset`` (trials already in the study) shifts the seed so a
    resumed study does not redraw the same parameters."""
    import optuna

    check_sampler(space)
    seed = space.seed + offset
    if space.sampler == "gp":
        # GPSampler conditions on running trials itself (q-batch log-EHVI), so trials in flight
        # need no constant liar; the policy's conditional parameters (the branch a granularity or
        # int8 switch opens) fall back to its independent random sampler by design, not by accident
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=space.startup_trials,
                                         warn_independent_sampling=False)
    if space.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                           n_startup_trials=space.startup_trials)
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(population_size=space.population_size, seed=seed)


def check_sampler(space: SearchSpace) -> None:
    """Raise ConfigError if the space's sampler cannot be built here: ``sampler: gp`` needs scipy
    (Optuna's GPSampler fits its Gaussian process with it)."""
    import importlib.util

    if space.sampler == "gp" and importlib.util.find_spec("scipy") is None:
        raise ConfigError(f"{space.source}: field 'sampler': 'gp' needs scipy, which is not installed in this "
                          "Python; install it with 'pip install scipy' (scripts/install.sh does), or choose "
                          "sampler: tpe, nsga2 or random")


def _resolve(space: SearchSpace | str | Path) -> SearchSpace:
    return space if isinstance(space, SearchSpace) else load_search_space(space)


def default_study_name(space: SearchSpace) -> str:
    src = space.source
    return Path(src).stem if src and not src.startswith("<") else "search"


def counts(trial: Any) -> bool:
    """Whether a trial counts towards ``n_trials``: finished, and neither an orphan that was re-enqueued
    (its re-run counts) nor a skipped duplicate."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (trial.state == TrialState.FAIL and not trial.user_attrs.get(T_ORPHANED)
            and not trial.user_attrs.get(T_DUPLICATE))


def counted(trials: list[Any]) -> int:
    """How many of ``trials`` count towards ``n_trials`` (:func:`counts`)."""
    return sum(1 for t in trials if counts(t))


def _policy_key(policy: dict[str, Any]) -> str:
    import json

    return json.dumps({k: v for k, v in policy.items() if k not in ("seed", "kept_heads", "kept_neurons")},
                      sort_keys=True)


def recover_orphans(study: Any) -> list[int]:
    """Mark RUNNING trials FAIL (``orphaned``) and enqueue their params again; returns their numbers."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, S.T_FAIL, "driver stopped while the trial ran; re-enqueued")
        study._storage.set_trial_user_attr(t._trial_id, T_ORPHANED, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={T_RETRY_OF: t.number})
        out.append(t.number)
    if out:
        log.warning("re-enqueued %d trial(s) left running by a stopped driver: %s", len(out), out)
    return out


def _prepare(space: SearchSpace, study_name: str | None, storage: str | None) -> tuple[Any, str, str, int]:
    """Validate everything that can be validated before a study exists; returns (config, name, url, depth)."""
    config = space.run_config()
    from autoprune.models import model_depth

    depth = model_depth(config)
    space.check_depth(depth)
    name = study_name or default_study_name(space)
    url = storage or default_storage(config.run_dir, name)
    return config, name, url, depth


def run_search(space: SearchSpace | str | Path, *, study_name: str | None = None, storage: str | None = None,
               address: str | None = None, n_trials: int | None = None, trial_fn: Callable[..., Any] | None = None,
               progress: bool = True, dense_metrics: dict[str, Any] | None = None, resume_only: bool = False) -> Any:
    """Run (or continue) a search; returns the ``optuna.Study``.

    * ``storage``: any Optuna URL; default ``sqlite:///<run_dir>/<study_name>.db``.
    * ``address``: a Ray cluster to join (else ``RAY_ADDRESS``, else a local Ray is started).
    * ``n_trials``: the study's total target (default: the space's ``n_trials``).
    * ``trial_fn``: the trial function (default :func:`autoprune.trial.run_trial`); a picklable
      top-level function or ``functools.partial`` of one.
    * ``dense_metrics``: dense baseline metrics to use instead of training the baseline (tests).
    * ``resume_only``: refuse to create a new study.

    Example:
        >>> study = run_search("search_spaces/quickstart.yaml")  # doctest: +SKIP
        >>> [t.number for t in study.best_trials]  # doctest: +SKIP
    """
    import optuna
    from optuna.trial import TrialState

    space = _resolve(space)
    check_sampler(space)  # a sampler that cannot be built (gp without scipy) fails before any storage exists
    config, name, url, depth = _prepare(space, study_name, storage)
    import os

    from autoprune.runtimes import check_before_study  # runtimes installed, GPUs present: before any study exists

    check_before_study(config.measure, space.gpus_per_trial, joining_cluster=bool(address or os.environ.get("RAY_ADDRESS")))
    if dense_metrics is None:  # the baseline will be trained: check the data files before a study exists
        from autoprune.data import check_files

        check_files(config.data)
    target = n_trials if n_trials is not None else space.n_trials
    if target < 1:
        raise ConfigError("--n-trials must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if resume_only and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        open_study(url, name)  # "no study storage at ..." without creating an empty database
    st = get_storage(url)
    exists = name in study_names(st)
    if resume_only and not exists:
        open_study(st, name)  # raises the "not found, existing: ..." error
    if exists:
        study = open_study(st, name)
        study.sampler = make_sampler(space, offset=len(study.get_trials(deepcopy=False)))
        log.info("continuing study '%s' in %s (%d trials so far)", name, mask_url(url), len(study.trials))
    else:
        study = optuna.create_study(study_name=name, storage=st, directions=S.DIRECTIONS, sampler=make_sampler(space))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(S.METRIC_NAMES)
        log.info("created study '%s' in %s", name, mask_url(url))

    lease = Lease(study).acquire()
    try:
        run_dir = Path(config.run_dir).resolve()
        cfg = config.model_copy(update={"run_dir": str(run_dir)})
        attrs = study.user_attrs
        if dense_metrics is None:
            dense_metrics, baseline_dir = _dense_baseline(cfg, attrs)
        else:
            baseline_dir = attrs.get(S.ATTR_BASELINE_DIR, "")
        dense_acc = dense_metrics.get("accuracy")
        floor = None if space.accuracy_drop_floor is None or dense_acc is None else float(dense_acc) - space.accuracy_drop_floor
        from autoprune import __version__

        for k, v in ((S.ATTR_CONFIG, cfg.model_dump(mode="json")), (S.ATTR_SPACE, space.raw()), (S.ATTR_DENSE, dense_metrics),
                     (S.ATTR_FLOOR, floor), (S.ATTR_BASELINE_DIR, str(baseline_dir)), (S.ATTR_VERSION, __version__)):
            if attrs.get(k) != v:
                study.set_user_attr(k, v)
        recover_orphans(study)
        _loop(study, space, cfg, depth, target, floor, trial_fn, address, progress, url)
    finally:
        lease.release()
    return study


def _dense_baseline(cfg: Any, attrs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from autoprune.train import baseline_metrics, ensure_baseline

    log.info("dense baseline: training or loading from cache under %s", cfg.run_dir)
    # no trial runs yet: the driver trains with torch's default thread count (all cores) instead of
    # the per-trial torch_threads; the thread count is not part of the baseline's cache key
    path = ensure_baseline(cfg.model_copy(update={"torch_threads": None}))
    m = dict(baseline_metrics(cfg, path))
    m.setdefault("accuracy", m.get("validation_accuracy"))
    m.setdefault("macro_f1", m.get("validation_macro_f1"))
    return m, str(path)


def _loop(study: Any, space: SearchSpace, cfg: Any, depth: int, target: int, floor: float | None,
          trial_fn: Callable[..., Any] | None, address: str | None, progress: bool, url: str) -> None:
    import ray
    from optuna.trial import TrialState

    from autoprune.search._dispatch import ray_session
    from autoprune.search._progress import Progress

    cfg_dict = cfg.model_dump(mode="json")
    early = {"margin": space.early_stop.margin, "min_fraction": space.early_stop.min_fraction}
    done = counted(study.get_trials(deepcopy=False))
    if done >= target:
        log.info("study '%s' already has %d finished trials (target %d)", study.study_name, done, target)
        return
    n_cpus = space.trials_in_flight * space.cpus_per_trial
    with ray_session(address=address, num_cpus=n_cpus, run_dir=cfg.run_dir), \
            Progress(study, target, enabled=progress) as prog:
        from autoprune.runtimes import check_cluster  # the cluster's GPUs and measurement nodes, before dispatch

        check_cluster(cfg.measure, space.gpus_per_trial)
        inflight: dict[Any, Any] = {}  # ObjectRef -> optuna Trial
        try:
            done = _dispatch_all(study, space, cfg_dict, depth, target, floor, trial_fn, early, prog, inflight, done)
        except BaseException:
            _abandon(study, inflight)
            raise


def _abandon(study: Any, inflight: dict[Any, Any]) -> None:
    """The driver is stopping (Ctrl-C, error): in-flight trials become FAIL (orphaned) and are re-enqueued.

    The Ray tasks are not cancelled (``ray.cancel`` racing a task that just finished crashes the Ray
    2.60 driver): a local Ray is shut down anyway, and on a cluster the task's result is dropped.
    """
    from optuna.trial import TrialState

    for trial in list(inflight.values()):
        try:
            trial.set_user_attr(S.T_FAIL, "driver stopped while the trial ran; re-enqueued")
            trial.set_user_attr(T_ORPHANED, True)
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(dict(trial.params), user_attrs={T_RETRY_OF: trial.number})
        except Exception as exc:  # noqa: BLE001 - the next start recovers RUNNING trials anyway
            log.warning("could not mark trial %d as interrupted: %s", trial.number, exc)
    inflight.clear()


def _dispatch_all(study: Any, space: SearchSpace, cfg_dict: dict[str, Any], depth: int, target: int,
                  floor: float | None, trial_fn: Callable[..., Any] | None, early: dict[str, float], prog: Any,
                  inflight: dict[Any, Any], done: int) -> int:
    import ray
    from optuna.trial import TrialState

    from autoprune.search._dispatch import submit

    seen = {_policy_key(t.user_attrs[S.T_POLICY]): t.number for t in study.get_trials(deepcopy=False)
            if S.T_POLICY in t.user_attrs and not t.user_attrs.get(T_DUPLICATE)}
    dup_streak = 0
    while True:
        while len(inflight) < space.trials_in_flight and done + len(inflight) < target:
            trial = study.ask()
            try:
                policy = space.sample_policy(trial, depth)
            except Exception as exc:  # noqa: BLE001 - a bad sample must not stop the search
                trial.set_user_attr(S.T_FAIL, f"cannot build a policy from the sampled parameters: {exc}")
                study.tell(trial, state=TrialState.FAIL)
                done += 1
                continue
            key = _policy_key(policy.to_dict())
            if key in seen and T_RETRY_OF not in trial.user_attrs and dup_streak < 10:
                # the sampler proposed a policy already tried: skip it (not counted), ask again
                dup_streak += 1
                trial.set_user_attr(S.T_FAIL, f"duplicate of trial {seen[key]}; skipped")
                trial.set_user_attr(T_DUPLICATE, True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            dup_streak = 0
            seen.setdefault(key, trial.number)
            trial.set_user_attr(S.T_POLICY, policy.to_dict())
            trial.set_user_attr(S.T_SUMMARY, policy.summary())
            save_dir = (str(Path(cfg_dict["run_dir"]).resolve() / "models" / study.study_name / f"trial_{trial.number}")
                        if space.save_models else None)
            ref = submit(trial_fn, cfg_dict, policy.to_dict(), floor, early, trial.number, space.cpus_per_trial,
                         save_dir=save_dir, num_gpus=space.gpus_per_trial)
            inflight[ref] = trial
            log.info("trial %d dispatched: %s", trial.number, policy.summary())
            prog.update(running=len(inflight))
        if not inflight:
            break
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        for ref in ready:
            _finish(study, inflight[ref], ref)
            del inflight[ref]
            done += 1
        prog.update(running=len(inflight))
    return done


def _finish(study: Any, trial: Any, ref: Any) -> None:
    import ray
    from optuna.trial import TrialState

    try:
        out = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - worker died twice, task cancelled, OOM-killed...
        msg = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {msg[0] if msg else ''}".strip()
        if "OutOfMemory" in type(exc).__name__ or "memory" in reason.lower():
            reason = f"out of memory: {reason}"
        out = {"status": "failed", "reason": f"worker lost (retried once): {reason}", "history": []}
    for k in (T_NODE,):
        if out.get(k):
            trial.set_user_attr(k, out[k])
    if out.get("host"):
        trial.set_user_attr(T_WORKER, f"{out['host']}:{out.get('pid')}")
    trial.set_user_attr(S.T_HISTORY, out.get("history") or [])
    status = out.get("status")
    if status == "complete":
        res = out["result"]
        trial.set_user_attr(S.T_RESULT, res)
        study.tell(trial, [float(res["accuracy"]), float(res["speedup"])])
        log.info("trial %d complete: accuracy %.4f speedup %.2fx", trial.number, res["accuracy"], res["speedup"])
    elif status == "pruned":
        trial.set_user_attr(S.T_PRUNE, out.get("reason") or "stopped early")
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned: %s", trial.number, out.get("reason"))
    else:
        trial.set_user_attr(S.T_FAIL, (out.get("reason") or "unknown failure")[:2000])
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, out.get("reason"))


def resume(space: SearchSpace | str | Path, **kwargs: Any) -> Any:
    """Continue an existing search (same options as :func:`run_search`); refuses to create a new study."""
    kwargs["resume_only"] = True
    return run_search(space, **kwargs)


def study_status(study_name: str | None, storage: str) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state (Optuna's: COMPLETE, PRUNED, FAIL, RUNNING, WAITING),
    counted (whether it counts towards ``n_trials``: an orphaned trial that was re-run or a skipped
    duplicate does not), policy_summary, accuracy, speedup, on_front, reason, node.

    Example:
        >>> rows = study_status("quickstart", "sqlite:///runs/quickstart.db")  # doctest: +SKIP
    """
    study = open_study(storage, study_name)
    front = S.pareto_numbers(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        res = ua.get(S.T_RESULT) or {}
        rows.append({
            "number": t.number, "state": t.state.name, "counted": counts(t),
            "policy_summary": ua.get(S.T_SUMMARY, ""),
            "accuracy": t.values[0] if t.values else None,
            "speedup": t.values[1] if t.values else None,
            "macro_f1": res.get("macro_f1"), "latency_ms": res.get("latency_ms"),
            "on_front": t.number in front,
            "reason": ua.get(S.T_FAIL) or ua.get(S.T_PRUNE),
            "node_id": ua.get(T_NODE),
            "duration_s": t.duration.total_seconds() if t.duration else None,
        })
    return rows


def study_lease(study: Any) -> dict[str, Any] | None:
    return study.user_attrs.get(ATTR_LEASE)
