"""Multi-fidelity search: rungs of increasing retraining budget, promotion between them, all in storage.

A space with ``rungs`` (e.g. ``[{retrain_steps: 0, reconstruct: least_squares}, {retrain_steps: 100},
{retrain_steps: full}]``) scores every sampled policy at rung 0 and gives the larger budgets only to
the policies that earn them by the multi-objective rule of :mod:`autoprune.search._promotion`
(non-dominated rank, crowding distance), asynchronously: whenever a rung result is recorded, any
policy finished at that rung that is in its top ``promote_fraction`` and not yet at the next rung is
enqueued there; workers never wait for a rung to fill.

Where the results live (one Optuna study per rung, in the same storage):

* the study the user names holds the **top rung** (the full budget): ``status``, the dashboard,
  ``export``, :func:`autoprune.study.front` and the hypervolume read it and nothing else, so a
  lower-rung result cannot reach a front or an export by construction, and every reader written
  before rungs existed stays honest;
* ``<name>.rung0``, ``<name>.rung1``, ... hold the lower rungs (each records ``rung_of`` and its
  index; the top study lists them in ``rung_studies`` and the rung list in ``rungs``);
* the **sampler lives on rung 0**: every new policy is asked there, so it learns from every cheap
  result (hundreds, instead of the few dozen full-budget trials a search without rungs affords). A
  sampler on the top study would see only what the rule already chose; one study holding all rungs
  would mix values of different budgets in one model of the front. The price: rung 0 says nothing
  about the retraining parameters (steps, learning rate, distillation), which the sampler then draws
  as if they did not matter; the rungs above run them as sampled;
* a promotion is a WAITING trial enqueued in the next rung's study with the source trial's
  parameters (so importances work on every rung) and user attrs ``rung``, ``budget``,
  ``target_policy`` (the full-budget policy) and ``source_trial``. Optuna forbids changing a finished
  trial, so the link is stored once, on the promoted trial; :func:`autoprune.study.rungs` reads it
  both ways (``promoted_to``);
* a rung with ``also_final`` (the reference space's rung 0) also sends each policy it promotes to the
  top rung *as it ran it there* (cut and re-fit, no retraining), when that result meets the search's
  accuracy floor: a policy of its own, whose budget is that rung's, timed in full at the top and on
  the front like any other final result (``final_of`` names where it ran first). It is enqueued
  before the full-budget promotion (it takes seconds, the full budget minutes). The reason is what a
  fine-tuned model does: retraining at a fresh learning rate lowered the best cuts of rung 0 (the
  multi-fidelity protocol runs in docs/BENCHMARKS.md), so the cut itself is often the better final
  policy;
* **nothing is promoted twice**: before enqueueing, the policy's key (:func:`policy_key`) is looked
  up among the next rung's trials (waiting, running, finished; an orphan counts through its re-run);
* **resume**: promotions are recomputed from storage whenever a driver starts, so a driver killed
  between recording a result and enqueueing its promotion loses nothing; trials left running at any
  rung are re-enqueued (with their rung attributes) like today's orphans, so a killed driver loses
  at most the rung work that was in flight.

``n_trials`` counts the policies finished at rung 0; a rung closes when nothing more can finish
there (rung 0: the target reached and nothing running; rung r: rung r-1 closed and nothing waiting
or running at r); a closed rung promotes ``ceil(n * fraction)`` instead of ``floor``, so a search
always carries its best policies to the top rung.

Example (the studies of a 3-rung search named ``quick``: two lower rungs, then ``quick`` itself):
    >>> rung_study_names("quick", 3)
    ['quick.rung0', 'quick.rung1']
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from autoprune import _study as S
from autoprune.errors import ConfigError, StudyError
from autoprune.search import _promotion as P
from autoprune.search._space import SearchSpace

log = logging.getLogger("autoprune.search")

#: user attrs a re-run of an interrupted trial keeps (its rung, budget, full policy, source)
CARRIED = (S.T_RUNG, S.T_BUDGET, S.T_TARGET_POLICY, S.T_SOURCE, S.T_FINAL_OF)


@dataclass
class Level:
    """One rung of a running search: its index, its study and how many trials wait there (promotions
    and re-runs enqueued, not yet started). A search without rungs has one level: its own study."""

    index: int
    study: Any
    waiting: int = 0


def rung_study_names(name: str, n_rungs: int) -> list[str]:
    """The studies of the lower rungs of study ``name`` (the top rung is ``name`` itself)."""
    return [f"{name}.rung{k}" for k in range(n_rungs - 1)]


def policy_key(policy: dict[str, Any]) -> str:
    """What makes two policies the same (their seed and kept units aside)."""
    return json.dumps({k: v for k, v in policy.items() if k not in ("seed", "kept_heads", "kept_neurons")},
                      sort_keys=True)


def target_key(trial: Any) -> str | None:
    """The key of the full-budget policy a trial stands for (``target_policy``, else ``policy``)."""
    ua = trial.user_attrs
    pol = ua.get(S.T_TARGET_POLICY) or ua.get(S.T_POLICY)
    return policy_key(pol) if isinstance(pol, dict) else None


def rungs_raw(space: SearchSpace) -> list[dict[str, Any]]:
    """The space's rungs as stored on the top study."""
    return [r.stored() for r in space.rungs or []]


def budget(policy: Any) -> dict[str, Any]:
    """What a rung ran a policy with: ``{"retrain_steps": n, "reconstruct": ...}``."""
    return {"retrain_steps": int(policy.retrain.steps), "reconstruct": policy.reconstruct}


def check_same_rungs(study: Any, space: SearchSpace) -> None:
    """Refuse to continue a study with other rungs than it was searched with (its lower-rung studies
    would no longer match); a study without rungs may go on with rungs (its trials ran the full budget)."""
    had = study.user_attrs.get(S.ATTR_RUNGS)
    now = rungs_raw(space)
    if had is None or had == now:
        return
    if not now:
        raise ConfigError(f"{space.source}: study '{study.study_name}' was searched with rungs {had}, the space now "
                          "has none; give the same 'rungs' to continue it, or a new study name (--study)")
    raise ConfigError(f"{space.source}: study '{study.study_name}' was searched with rungs {had}, the space now gives "
                      f"{now}; give the same 'rungs' to continue it, or a new study name (--study)")


def open_levels(storage: Any, top: Any, space: SearchSpace) -> list[Level]:
    """The levels of a multi-fidelity search on top study ``top``: the lower rungs' studies (created
    when missing), then ``top``. Rung 0 gets the space's sampler (seeded past the trials it holds), the
    others a random sampler: they only ever start enqueued trials."""
    import optuna

    from autoprune.search._driver import make_sampler
    from autoprune.search._storage import check_study_name

    assert space.rungs is not None
    names = rung_study_names(top.study_name, len(space.rungs))
    for n in names:
        check_study_name(n, where=f"the study of a lower rung of '{top.study_name}'; choose a shorter study name")
    studies = [optuna.create_study(study_name=n, storage=storage, directions=S.DIRECTIONS, load_if_exists=True,
                                   sampler=optuna.samplers.RandomSampler(seed=space.seed)) for n in names]
    import warnings

    for st in studies:
        if st.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                st.set_metric_names(S.METRIC_NAMES)
    studies[0].sampler = make_sampler(space, offset=len(studies[0].get_trials(deepcopy=False)))
    top.sampler = optuna.samplers.RandomSampler(seed=space.seed)
    return [Level(k, st) for k, st in enumerate([*studies, top])]


def set_level_attrs(levels: list[Level], attrs: dict[str, Any], space: SearchSpace) -> None:
    """Record the study attributes on every level, and the rung bookkeeping on the top and lower studies."""
    top = levels[-1].study
    for lvl in levels:
        extra: dict[str, Any] = {}
        if lvl is levels[-1]:
            extra = {S.ATTR_RUNGS: rungs_raw(space), S.ATTR_RUNG_STUDIES: [x.study.study_name for x in levels[:-1]]}
        else:
            extra = {S.ATTR_RUNG_OF: top.study_name, S.ATTR_RUNG: lvl.index}
        have = lvl.study.user_attrs
        for k, v in {**attrs, **extra}.items():
            if have.get(k) != v:
                lvl.study.set_user_attr(k, v)


def finished_candidates(study: Any) -> list[tuple[P.Candidate, Any]]:
    """The policies finished at a rung (trials that count towards ``n_trials``), as promotion candidates
    with their trials."""
    from optuna.trial import TrialState

    from autoprune.search._driver import counts

    out = []
    for t in study.get_trials(deepcopy=False):
        key = target_key(t)
        if key is None or not counts(t):
            continue
        values = tuple(float(v) for v in t.values) if t.state == TrialState.COMPLETE and t.values else None
        out.append((P.Candidate(number=t.number, key=key, values=values), t))
    return out


def promoted_keys(study: Any) -> set[str]:
    """Keys of the policies already at this rung (waiting, running or finished; an orphan left FAIL
    by a stopped driver counts only through its re-run, so one whose re-run was lost is promoted again)."""
    return {k for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get(S.T_ORPHANED) and (k := target_key(t)) is not None}


def enqueue_promotion(upper: Level, source: Any, space: SearchSpace) -> None:
    """Enqueue the policy of ``source`` (a finished trial one rung below) at ``upper``."""
    from autoprune.policy import PruningPolicy

    target = source.user_attrs[S.T_TARGET_POLICY]
    ran = space.rung_policy(PruningPolicy.model_validate(target), upper.index)
    upper.study.enqueue_trial(dict(source.params), user_attrs={
        S.T_RUNG: upper.index, S.T_BUDGET: budget(ran), S.T_TARGET_POLICY: target, S.T_SOURCE: source.number})
    upper.waiting += 1
    log.info("promoted trial %d of rung %d to rung %d: %s", source.number, upper.index - 1, upper.index,
             source.user_attrs.get(S.T_SUMMARY, ""))


def enqueue_final(top: Level, source: Any, rung: int) -> None:
    """Enqueue at the top rung the policy ``source`` ran at rung ``rung``, as it ran it (``also_final``)."""
    from autoprune.policy import PruningPolicy

    ran = source.user_attrs[S.T_POLICY]
    top.study.enqueue_trial(dict(source.params), user_attrs={
        S.T_RUNG: top.index, S.T_BUDGET: budget(PruningPolicy.model_validate(ran)), S.T_TARGET_POLICY: ran,
        S.T_FINAL_OF: {"rung": rung, "trial": source.number}})
    top.waiting += 1
    log.info("trial %d of rung %d also runs at the top rung as it ran: %s", source.number, rung,
             source.user_attrs.get(S.T_SUMMARY, ""))


def promote(levels: list[Level], space: SearchSpace, closed: Callable[[int], bool],
            floor: float | None = None) -> int:
    """Enqueue every promotion the rule allows now, rung by rung from the bottom; returns how many.

    ``closed(r)`` says whether rung ``r`` can still grow (called after the promotions into ``r`` of
    this pass, so a rung closes in the same pass as the one below it). ``floor``: the search's accuracy
    floor (dense accuracy - ``accuracy_drop_floor``); with the space's ``promote_floor_slack``, policies
    more than that slack below it rank after all others (:func:`~autoprune.search._promotion.order`).
    A rung with ``also_final`` sends every policy it promoted (now or before: a driver stopped in
    between catches up here) whose result there meets ``floor`` to the top rung as it ran it, once.
    """
    below = None if floor is None or space.promote_floor_slack is None else floor - space.promote_floor_slack
    n = 0
    top = levels[-1]
    for r in range(len(levels) - 1):
        lower, upper = levels[r], levels[r + 1]
        cands = finished_candidates(lower.study)
        up = promoted_keys(upper.study)
        chosen = P.select([c for c, _ in cands], space.promote_fraction, up, closed=closed(r), floor=below)
        by_number = {c.number: t for c, t in cands}
        if space.rungs and space.rungs[r].also_final:
            finals = promoted_keys(top.study)
            for c in sorted({*chosen, *(c for c, _ in cands if c.key in up)}, key=lambda c: c.number):
                t = by_number[c.number]
                key = policy_key(t.user_attrs[S.T_POLICY])
                if c.values is None or (floor is not None and c.values[0] < floor) or key == c.key or key in finals:
                    continue
                enqueue_final(top, t, r)
                finals.add(key)
                n += 1
        for c in chosen:
            enqueue_promotion(upper, by_number[c.number], space)
            n += 1
    return n


def retry_attrs(trial: Any, retry_of_key: str) -> dict[str, Any]:
    """The user attrs of the re-run of an interrupted trial: which trial it re-runs, and its rung
    attributes (a trial without rungs carries none)."""
    ua = trial.user_attrs
    return {retry_of_key: trial.number, **{k: ua[k] for k in CARRIED if k in ua}}


def check_not_lower_rung(study: Any, what: str) -> None:
    """Raise StudyError when ``study`` holds a lower rung of a multi-fidelity search (its results are
    not final: ``what`` names the refused use)."""
    of = study.user_attrs.get(S.ATTR_RUNG_OF)
    if of is not None:
        raise StudyError(f"study '{study.study_name}' holds rung {study.user_attrs.get(S.ATTR_RUNG)} of the "
                         f"multi-fidelity search '{of}': its results ran a reduced budget and are not final; "
                         f"{what} study '{of}' (the top rung) instead")
