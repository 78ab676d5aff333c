"""The search driver: one process runs the Optuna study with ask/tell and keeps
``trials_in_flight`` trials running on an executor (Ray tasks by default; see ``_executor``).

Resume: the storage is the only record. On start the driver takes the study lease, marks
trials left RUNNING by a dead driver FAIL (``orphaned``) and re-enqueues their params, then
asks for new trials until ``n_trials`` trials are finished (COMPLETE, PRUNED, or FAIL that is
not an orphan re-run elsewhere).

The loop (:func:`drive`) only fills free slots and records outcomes, on one :class:`DriverState`;
what to run next (:func:`_next_job`) and what an outcome means for the study (:func:`_record`) are
separate steps.

A space with ``rungs`` runs a multi-fidelity search (:mod:`autoprune.search._rungs`): the state then
holds one level per rung, new policies are asked at rung 0 and ``n_trials`` counts them there,
promotions wait at the rungs above and run first, and every recorded result may promote. Without
rungs there is one level, the study itself, and everything is as described above. A wall-time budget
(``timeout_s``, ``search --timeout``) stops dispatching; trials in flight finish and are recorded.

Example (fake trials in this process, as in the tests):
    >>> import functools
    >>> from autoprune.search import load_search_space, run_search
    >>> from autoprune.search._executor import InProcessExecutor
    >>> from autoprune.search._fake import fake_trial
    >>> space = load_search_space("search_spaces/quickstart.yaml")  # doctest: +SKIP
    >>> study = run_search(space, trial_fn=functools.partial(fake_trial, sleep=0.1), executor=InProcessExecutor(),
    ...                    dense_metrics={"accuracy": 0.9}, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

from autoprune import _study as S
from autoprune.errors import ConfigError
from autoprune.search._executor import Executor, TrialJob
from autoprune.search._progress import Progress
from autoprune.search._rungs import Level, check_same_rungs, open_levels, promote, retry_attrs, set_level_attrs
from autoprune.search._rungs import policy_key as _policy_key
from autoprune.search._space import SearchSpace, load_search_space
from autoprune.search._storage import (Lease, check_study_name, default_storage, get_storage, mask_url, open_study,
                                       prepare_sqlite, study_names)

log = logging.getLogger("autoprune.search")

T_ORPHANED = S.T_ORPHANED    # FAIL trial left RUNNING by a dead driver (not counted; re-enqueued)
T_RETRY_OF = "retry_of"      # number of the orphaned trial this one re-runs
T_DUPLICATE = S.T_DUPLICATE  # FAIL trial whose policy was already tried (not counted, never run)
T_NODE = "node_id"
T_WORKER = "worker"
T_THREADS = "torch_threads"  # intra-op threads the trial ran with (read in the worker)


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


def recover_orphans(study: Any) -> list[int]:
    """Mark RUNNING trials FAIL (``orphaned``) and enqueue their params again; returns their numbers."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, S.T_FAIL, "driver stopped while the trial ran; re-enqueued")
        study._storage.set_trial_user_attr(t._trial_id, T_ORPHANED, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs=retry_attrs(t, T_RETRY_OF))
        out.append(t.number)
    if out:
        log.warning("re-enqueued %d trial(s) left running by a stopped driver: %s", len(out), out)
    return out


def trial_threads(config: Any, cpus_per_trial: float) -> int:
    """Intra-op threads of each trial: the run config's ``torch_threads`` when set, else the CPUs the
    trial was given (``cpus_per_trial``, at least 1), so parallel trials never oversubscribe the machine.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> trial_threads(NS(torch_threads=None), 2), trial_threads(NS(torch_threads=None), 0.5), trial_threads(NS(torch_threads=4), 2)
        (2, 1, 4)
    """
    return int(config.torch_threads) if config.torch_threads else max(1, int(cpus_per_trial))


def _prepare(space: SearchSpace, study_name: str | None, storage: str | None) -> tuple[Any, str, str, int]:
    """Validate everything that can be validated before a study exists; returns (config, name, url, depth)."""
    config = space.run_config()
    from autoprune.models import model_depth

    depth = model_depth(config)
    space.check_depth(depth)
    if study_name is None:
        name = check_study_name(default_study_name(space), where=f"the name of the search space file {space.source}; "
                                "rename the file or give a study name")
    else:
        name = check_study_name(study_name)
    url = storage or default_storage(config.run_dir, name)
    return config, name, url, depth


@dataclass(frozen=True)
class Slot:
    """What runs behind one executor handle: a trial of the study of level ``level``."""

    level: int
    trial: Any


@dataclass
class DriverState:
    """Everything the submit/complete loop of one driver reads and changes.

    ``study``: the study the search was named for (the top rung of a multi-fidelity search);
    ``levels``: one :class:`~autoprune.search._rungs.Level` per rung, rung 0 first (without rungs: the
    study alone); ``config``: the run config dict every trial gets; ``done``: trials of level 0 so far
    that count towards ``target`` (:func:`counts`); ``inflight``: executor handle -> :class:`Slot`;
    ``seen``: policy key -> number of the first level-0 trial that ran it (the duplicate check);
    ``dup_streak``: duplicates asked in a row; ``deadline``: ``time.monotonic()`` after which nothing
    new starts (None: no wall-time budget).
    """

    study: Any
    space: SearchSpace
    config: dict[str, Any]
    depth: int
    target: int
    floor: float | None = None
    trial_fn: Callable[..., Any] | None = None
    done: int = 0
    inflight: dict[Hashable, Slot] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    dup_streak: int = 0
    levels: list[Level] = field(default_factory=list)
    deadline: float | None = None
    timed_out: bool = False

    def __post_init__(self) -> None:
        if not self.levels:
            self.levels = [Level(0, self.study)]

    @classmethod
    def of(cls, study: Any, space: SearchSpace, config: dict[str, Any], depth: int, target: int,
           floor: float | None, trial_fn: Callable[..., Any] | None,
           levels: list[Level] | None = None) -> "DriverState":
        """The state of a driver starting on ``study`` (counts and policies of the trials on record);
        ``levels``: the rungs of a multi-fidelity search (default: the study alone)."""
        levels = levels or [Level(0, study)]
        trials = levels[0].study.get_trials(deepcopy=False)
        seen = {_policy_key(t.user_attrs.get(S.T_TARGET_POLICY) or t.user_attrs[S.T_POLICY]): t.number
                for t in trials if S.T_POLICY in t.user_attrs and not t.user_attrs.get(T_DUPLICATE)}
        return cls(study, space, config, depth, target, floor, trial_fn, done=counted(trials), seen=seen,
                   levels=levels)

    @property
    def early_stop(self) -> dict[str, float]:
        return {"margin": self.space.early_stop.margin, "min_fraction": self.space.early_stop.min_fraction}

    @property
    def rungs(self) -> bool:
        """Whether this is a multi-fidelity search (more than one level)."""
        return len(self.levels) > 1

    def running_at(self, level: int) -> int:
        return sum(1 for s in self.inflight.values() if s.level == level)

    def out_of_time(self) -> bool:
        """Whether the wall-time budget is spent (logged once)."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return False
        if not self.timed_out:
            self.timed_out = True
            log.warning("wall-time budget reached: no new trials start; waiting for the %d in flight",
                        len(self.inflight))
        return True

    def wants_more(self) -> bool:
        """Whether to start another trial now: a free slot, time left, and a promotion waiting or the
        target not reached by the level-0 trials finished and running."""
        if len(self.inflight) >= self.space.trials_in_flight or self.out_of_time():
            return False
        if any(lvl.waiting > 0 for lvl in self.levels[1:]):
            return True
        return self.done + self.running_at(0) < self.target

    def finished(self) -> bool:
        """Whether there is nothing left to run: the target reached and no promotion waiting."""
        return self.done >= self.target and not any(lvl.waiting > 0 for lvl in self.levels[1:])

    def closed(self, rung: int) -> bool:
        """Whether nothing more can finish at ``rung``: rung 0 when the target is reached and nothing
        runs there; a higher rung when the one below is closed and nothing waits or runs at it."""
        if rung == 0:
            return self.done >= self.target and self.running_at(0) == 0
        return self.closed(rung - 1) and self.levels[rung].waiting == 0 and self.running_at(rung) == 0

    def promote(self) -> int:
        """Enqueue the promotions the rule allows now (multi-fidelity searches); returns how many."""
        return promote(self.levels, self.space, self.closed, self.floor) if self.rungs else 0


def run_search(space: SearchSpace | str | Path, *, study_name: str | None = None, storage: str | None = None,
               address: str | None = None, n_trials: int | None = None, trial_fn: Callable[..., Any] | None = None,
               progress: bool = True, dense_metrics: dict[str, Any] | None = None, resume_only: bool = False,
               executor: Executor | None = None, heartbeat_s: float = 60.0,
               timeout_s: float | None = None) -> Any:
    """Run (or continue) a search; returns the ``optuna.Study``.

    * ``study_name``: letters, digits, '.', '_', '-' (default: the space file's stem).
    * ``storage``: any Optuna URL; default ``sqlite:///<run_dir>/<study_name>.db``.
    * ``address``: a Ray cluster to join (else ``RAY_ADDRESS``, else a local Ray is started).
    * ``n_trials``: the study's total target (default: the space's ``n_trials``).
    * ``trial_fn``: the trial function (default :func:`autoprune.trial.run_trial`); a picklable
      top-level function or ``functools.partial`` of one.
    * ``progress``: a live display on a terminal; without one (output to a file), one line per finished
      trial and a heartbeat every ``heartbeat_s`` seconds, on stderr.
    * ``dense_metrics``: dense baseline metrics to use instead of training the baseline (tests).
    * ``resume_only``: refuse to create a new study.
    * ``executor``: where trials run (default :class:`~autoprune.search._executor.RayExecutor` on ``address``;
      :class:`~autoprune.search._executor.InProcessExecutor` runs them in this process).
    * ``timeout_s``: wall-time budget of this run in seconds (default: the space's ``timeout_s``), counted
      from the first dispatch: after it no trial starts, the ones in flight finish and are recorded.

    With ``rungs`` in the space the search is multi-fidelity (:mod:`autoprune.search._rungs`): ``n_trials``
    counts the policies finished at rung 0, the returned study holds the top rung only, the lower rungs
    are the studies ``<name>.rung0``, ``<name>.rung1``, ... in the same storage.

    Each trial runs with ``torch_threads`` intra-op threads: the run config's value, else ``cpus_per_trial``
    (:func:`trial_threads`); the value is recorded in the study's run config.

    Example:
        >>> study = run_search("search_spaces/quickstart.yaml")  # doctest: +SKIP
        >>> [t.number for t in study.best_trials]  # doctest: +SKIP
    """
    import optuna

    space = _resolve(space)
    check_sampler(space)  # a sampler that cannot be built (gp without scipy) fails before any storage exists
    config, name, url, depth = _prepare(space, study_name, storage)
    target = n_trials if n_trials is not None else space.n_trials
    if target < 1:
        raise ConfigError(f"n_trials must be at least 1, got {target} (--n-trials on the command line)")
    if not heartbeat_s > 0:
        raise ConfigError(f"heartbeat_s must be a positive number of seconds, got {heartbeat_s} "
                          "(--heartbeat on the command line)")
    timeout = timeout_s if timeout_s is not None else space.timeout_s
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout} (--timeout on the command line)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if resume_only and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        open_study(url, name)  # "no study storage at ..." without creating an empty database
    prepare_sqlite(url, create_folder=storage is None)  # a read-only location: one clear error, nothing written
    from autoprune.runtimes import check_before_study, check_int8  # runtimes, GPUs, int8: before any study exists

    check_before_study(config.measure, space.gpus_per_trial,
                       joining_cluster=bool(address or os.environ.get("RAY_ADDRESS")))
    if config.measure.latency_table:
        raise ConfigError(f"{space.source}: its run config's 'measure' sets latency_table, but a search's final "
                          "results are always timed; remove it, and give a rung below the top 'speed: table' to "
                          "predict speed there")
    if True in (space.quantize if isinstance(space.quantize, list) else [space.quantize]):
        check_int8(config.measure, f"{space.source}: 'quantize' includes true, and its run config's 'measure'")
    if dense_metrics is None:  # the baseline will be trained: check data and model before a study exists
        from autoprune.train import check_config

        check_config(config)
    st = get_storage(url)
    exists = name in study_names(st)
    if resume_only and not exists:
        open_study(st, name)  # raises the "not found, existing: ..." error
    if exists:
        study = open_study(st, name)
        check_same_rungs(study, space)
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
        cfg = config.model_copy(update={"run_dir": str(run_dir),
                                        "torch_threads": trial_threads(config, space.cpus_per_trial)})
        attrs = study.user_attrs
        if dense_metrics is None:
            dense_metrics, baseline_dir = _dense_baseline(cfg, attrs)
        else:
            baseline_dir = attrs.get(S.ATTR_BASELINE_DIR, "")
        dense_acc = dense_metrics.get("accuracy")
        floor = None if space.accuracy_drop_floor is None or dense_acc is None else float(dense_acc) - space.accuracy_drop_floor
        from autoprune import __version__

        study_attrs = {S.ATTR_CONFIG: cfg.model_dump(mode="json"), S.ATTR_SPACE: space.raw(),
                       S.ATTR_DENSE: dense_metrics, S.ATTR_FLOOR: floor, S.ATTR_BASELINE_DIR: str(baseline_dir),
                       S.ATTR_VERSION: __version__}
        levels = None
        if space.rungs:
            levels = open_levels(st, study, space)
            set_level_attrs(levels, study_attrs, space)
        else:
            for k, v in study_attrs.items():
                if attrs.get(k) != v:
                    study.set_user_attr(k, v)
        for lvl in levels or [Level(0, study)]:
            recover_orphans(lvl.study)
        state = DriverState.of(study, space, cfg.model_dump(mode="json"), depth, target, floor, trial_fn, levels)
        if state.rungs:
            _recount_waiting(state.levels)
            state.promote()  # a driver stopped between a result and its promotion: recomputed from storage
        if state.finished():
            log.info("study '%s' already has %d finished trials (target %d)", name, state.done, target)
            return study
        from autoprune.search._executor import RayExecutor, running

        ex = executor if executor is not None else RayExecutor(address)
        with running(ex, num_cpus=space.trials_in_flight * space.cpus_per_trial, run_dir=run_dir), \
                Progress(study, target, enabled=progress, heartbeat_s=heartbeat_s,
                         levels=[lvl.study for lvl in state.levels] if state.rungs else None) as prog:
            state.deadline = None if timeout is None else time.monotonic() + timeout
            if isinstance(ex, RayExecutor):  # the cluster's GPUs and measurement nodes, before dispatch
                from autoprune.runtimes import check_cluster

                check_cluster(cfg.measure, space.gpus_per_trial)
            drive(state, ex, prog)
    finally:
        lease.release()
    return study


def _recount_waiting(levels: list[Level]) -> None:
    """Read the waiting counts of the levels above rung 0 from storage (after orphans were re-enqueued)."""
    from optuna.trial import TrialState

    for lvl in levels[1:]:
        lvl.waiting = len(lvl.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _dense_baseline(cfg: Any, attrs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from autoprune.train import baseline_metrics, ensure_baseline

    log.info("dense baseline: training or loading from cache under %s", cfg.run_dir)
    # no trial runs yet: the driver trains with all the CPUs it may use (train.available_cpus) instead
    # of the per-trial torch_threads; the thread count is not part of the baseline's cache key
    path = ensure_baseline(cfg.model_copy(update={"torch_threads": None}))
    m = dict(baseline_metrics(cfg, path))
    m.setdefault("accuracy", m.get("validation_accuracy"))
    m.setdefault("macro_f1", m.get("validation_macro_f1"))
    return m, str(path)


def drive(state: DriverState, executor: Executor, prog: Progress) -> None:
    """The submit/complete loop: keep ``trials_in_flight`` trials running until ``target`` trials count
    (and, with rungs, no promotion waits), or the wall-time budget is spent.

    Each round fills the free slots (:func:`_next_job`: a waiting promotion, else ask, sample, skip
    duplicates, submit), then records whatever the executor reports finished (:func:`_record`) and,
    with rungs, enqueues the promotions the result allows. When the loop stops early (Ctrl-C, an
    error), the trials in flight become orphans and are re-enqueued (:func:`_abandon`).
    """
    try:
        while True:
            while state.wants_more():
                nxt = _next_job(state)
                if nxt is not None:
                    slot, job = nxt
                    state.inflight[executor.submit(job)] = slot
                    log.info("%strial %d dispatched: %s", f"rung {slot.level} " if state.rungs else "",
                             slot.trial.number, slot.trial.user_attrs.get(S.T_SUMMARY))
            prog.update(running=len(state.inflight))
            if not state.inflight:
                break
            for handle in executor.wait(list(state.inflight), timeout=1.0):
                slot = state.inflight[handle]
                line = _record(state.levels[slot.level].study, slot.trial, executor.result(handle))
                del state.inflight[handle]  # only once told: an interrupt while recording re-enqueues it
                if slot.level == 0:
                    state.done += 1
                if state.rungs:
                    line = f"rung {slot.level} {line}"
                    state.promote()
                prog.finished(line, done=state.done, running=len(state.inflight))
    except BaseException:
        _abandon(state, executor)
        raise


def _next_job(state: DriverState) -> tuple[Slot, TrialJob] | None:
    """The next trial to run and its job: a promotion waiting at the highest rung that has one, else a
    new policy asked at level 0. None when nothing was started: the trial was recorded without running
    (its parameters make no policy: FAIL, counted; a duplicate policy: FAIL, not counted), or a rung's
    waiting count was stale."""
    for lvl in reversed(state.levels[1:]):
        if lvl.waiting > 0:
            return _promoted_job(state, lvl)
    return _new_job(state)


def _new_job(state: DriverState) -> tuple[Slot, TrialJob] | None:
    """Ask level 0 (the sampler) for a policy; with rungs it runs at rung 0's budget."""
    from optuna.trial import TrialState

    study, space = state.levels[0].study, state.space
    trial = study.ask()
    try:
        policy = space.sample_policy(trial, state.depth)
    except Exception as exc:  # noqa: BLE001 - a bad sample must not stop the search
        trial.set_user_attr(S.T_FAIL, f"cannot build a policy from the sampled parameters: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        state.done += 1
        return None
    key = _policy_key(policy.to_dict())
    if key in state.seen and T_RETRY_OF not in trial.user_attrs and state.dup_streak < 10:
        # the sampler proposed a policy already tried: skip it (not counted), ask again
        state.dup_streak += 1
        trial.set_user_attr(S.T_FAIL, f"duplicate of trial {state.seen[key]}; skipped")
        trial.set_user_attr(T_DUPLICATE, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    state.dup_streak = 0
    state.seen.setdefault(key, trial.number)
    if state.rungs:
        from autoprune.search._rungs import budget

        ran = space.rung_policy(policy, 0)
        trial.set_user_attr(S.T_RUNG, 0)
        trial.set_user_attr(S.T_BUDGET, budget(ran))
        trial.set_user_attr(S.T_TARGET_POLICY, policy.to_dict())
        policy = ran
    return _job(state, 0, trial, policy)


def _promoted_job(state: DriverState, lvl: Level) -> tuple[Slot, TrialJob] | None:
    """Start the oldest promotion waiting at ``lvl``: the source's full-budget policy at the rung's budget."""
    from optuna.trial import TrialState

    from autoprune.policy import PruningPolicy

    lvl.waiting = len(lvl.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if lvl.waiting == 0:
        return None
    trial = lvl.study.ask()  # pops the oldest waiting trial: its params and user attrs were enqueued
    lvl.waiting -= 1
    target = trial.user_attrs.get(S.T_TARGET_POLICY)
    try:
        if not isinstance(target, dict):
            raise ValueError("the trial carries no target_policy (it was not enqueued by a promotion)")
        state.space.sample_policy(trial, state.depth)  # records the enqueued params on this trial
        policy = PruningPolicy.model_validate(target)
        if S.T_FINAL_OF not in trial.user_attrs:  # a lower rung's policy as it ran there runs unchanged
            policy = state.space.rung_policy(policy, lvl.index)
    except Exception as exc:  # noqa: BLE001 - a promotion the space can no longer build must not stop the search
        trial.set_user_attr(S.T_FAIL, f"cannot build the promoted policy: {exc}")
        state.levels[lvl.index].study.tell(trial, state=TrialState.FAIL)
        return None
    return _job(state, lvl.index, trial, policy)


def _lower_rung_config(config: dict[str, Any], rung: Any) -> dict[str, Any]:
    """The run config of a rung below the top: speed screened in the objective's target, or predicted
    by its latency table (the rung's ``speed``; :meth:`~autoprune.config.MeasureConfig.screening`)."""
    from autoprune.config import MeasureConfig

    measure = MeasureConfig.model_validate(config.get("measure") or {}).screening(table=rung.speed == "table")
    return {**config, "measure": measure.model_dump()}


def _job(state: DriverState, level: int, trial: Any, policy: Any) -> tuple[Slot, TrialJob]:
    """Record the policy a trial runs and build its job. Only the top level saves models (when the space
    asks), stops trials early and times speed in full in every measurement target: below it the
    promotion rule is the filter, it reads the objective's speedup only (screened in fewer rounds),
    and the floor is set for the full budget, which a short rung's mid-way accuracy says little about."""
    trial.set_user_attr(S.T_POLICY, policy.to_dict())
    trial.set_user_attr(S.T_SUMMARY, policy.summary())
    top = level == len(state.levels) - 1
    save_dir = (str(Path(state.config["run_dir"]) / "models" / state.study.study_name / f"trial_{trial.number}")
                if state.space.save_models and top else None)
    config = state.config if top else _lower_rung_config(state.config, state.space.rungs[level])
    job = TrialJob(number=trial.number, config=config, policy=policy.to_dict(),
                   floor=state.floor if top else None,
                   early_stop=state.early_stop, num_cpus=state.space.cpus_per_trial,
                   num_gpus=state.space.gpus_per_trial, save_dir=save_dir,
                   trial_fn=state.trial_fn)
    return Slot(level, trial), job


def _abandon(state: DriverState, executor: Executor) -> None:
    """The driver is stopping (Ctrl-C, error): in-flight trials become FAIL (orphaned) and are re-enqueued."""
    from optuna.trial import TrialState

    for handle, slot in list(state.inflight.items()):
        executor.cancel(handle)
        trial, study = slot.trial, state.levels[slot.level].study
        try:
            trial.set_user_attr(S.T_FAIL, "driver stopped while the trial ran; re-enqueued")
            trial.set_user_attr(T_ORPHANED, True)
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(dict(trial.params), user_attrs=retry_attrs(trial, T_RETRY_OF))
        except Exception as exc:  # noqa: BLE001 - the next start recovers RUNNING trials anyway
            log.warning("could not mark trial %d as interrupted: %s", trial.number, exc)
    state.inflight.clear()


def _record(study: Any, trial: Any, out: dict[str, Any]) -> str:
    """Tell the study a trial's outcome (from :func:`~autoprune.search._dispatch.execute_trial`); returns
    a one-line description of it."""
    from optuna.trial import TrialState

    if out.get(T_NODE):
        trial.set_user_attr(T_NODE, out[T_NODE])
    if out.get("host"):
        trial.set_user_attr(T_WORKER, f"{out['host']}:{out.get('pid')}")
    if out.get(T_THREADS):
        trial.set_user_attr(T_THREADS, out[T_THREADS])
    trial.set_user_attr(S.T_HISTORY, out.get("history") or [])
    status = out.get("status")
    summary = trial.user_attrs.get(S.T_SUMMARY, "")
    if status == "complete":
        res = out["result"]
        trial.set_user_attr(S.T_RESULT, res)
        study.tell(trial, [float(res["accuracy"]), float(res["speedup"])])
        line = f"trial {trial.number} complete: accuracy {res['accuracy']:.4f}, speedup {res['speedup']:.2f}x ({summary})"
        log.info(line)
    elif status == "pruned":
        reason = out.get("reason") or "stopped early"
        trial.set_user_attr(S.T_PRUNE, reason)
        study.tell(trial, state=TrialState.PRUNED)
        line = f"trial {trial.number} pruned: {reason} ({summary})"
        log.info(line)
    else:
        reason = (out.get("reason") or "unknown failure")[:2000]
        trial.set_user_attr(S.T_FAIL, reason)
        study.tell(trial, state=TrialState.FAIL)
        line = f"trial {trial.number} failed: {reason.splitlines()[0][:300]} ({summary})"
        log.warning("trial %d failed: %s", trial.number, reason)
    return line


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
