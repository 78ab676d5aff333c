"""Reading results: the one way to open an autoprune study and read what its search recorded.

* :func:`locate` / :func:`load_study` find a study from a search space file (the storage and name
  ``autoprune search`` gave it) or from a storage URL.
* :func:`trial_records` turns its trials into plain :class:`TrialRecord` objects (policy, result,
  state, whether the trial counts towards ``n_trials``); :func:`counted_trials` and
  :func:`completed_trials` select among them.
* :func:`front` is the Pareto front of validation accuracy and measured speedup (both maximised);
  :func:`hypervolume` the area it dominates above a :func:`reference_point`.

* :func:`study_info` gives what the search recorded about the study as a whole (run config, dense
  baseline, accuracy floor).
* :func:`rungs` gives the rungs of a multi-fidelity search (the study holds the top rung; the lower
  rungs are sibling studies in the same storage), each with its trials and promotions.

Everything here reads the schema of :mod:`autoprune._study`. The one writer,
:func:`record_result`, adds results obtained outside a search (a fixed sweep) in the same schema.

Example (a study built in memory; the same calls work on one opened with :func:`load_study`):
    >>> import optuna
    >>> s = optuna.create_study(directions=["maximize", "maximize"])
    >>> for acc, speedup in [(0.90, 1.5), (0.88, 2.0), (0.86, 1.8)]:
    ...     s.add_trial(optuna.trial.create_trial(values=[acc, speedup]))
    >>> [(r.number, r.accuracy, r.speedup) for r in front(s)]
    [(0, 0.9, 1.5), (1, 0.88, 2.0)]
    >>> ref = reference_point(0.92)   # dense accuracy 0.92: (0.87, 1.0)
    >>> round(hypervolume(s, ref), 6)  # 0.5 * 0.03 + 0.5 * 0.01
    0.02
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from autoprune import _study as S
from autoprune.errors import StudyError

#: the hypervolume's reference point lies this far (accuracy, 5 points) below the dense model, at speedup 1.0
REF_MARGIN = 0.05


# ----------------------------------------------------------------------------- locating a study
@dataclass(frozen=True)
class StudyLocation:
    """Where a study lives: its storage URL, its name (None: the storage's only study) and the run
    directory its files (dashboard, saved models) belong to, when known."""

    storage: str
    study_name: str | None
    run_dir: Path | None = None

    def open(self) -> Any:
        """The ``optuna.Study``; :class:`~autoprune.errors.StudyError` lists the studies there if it is missing."""
        from autoprune.search import open_study

        return open_study(self.storage, self.study_name)


def locate(space: str | Path | None = None, *, study_name: str | None = None,
           storage: str | None = None) -> StudyLocation:
    """Where the study of a search space file (or of ``storage``) is, by the search's own convention.

    With ``space``, the storage defaults to ``sqlite:///<run_dir>/<stem>.db`` and the study name to
    the file's stem, as ``autoprune search`` chose them; ``study_name`` and ``storage`` override.
    Without it, ``storage`` is required and ``study_name`` may be None when it holds one study.

    Example:
        >>> loc = locate(storage="sqlite:///runs/q/quickstart.db", study_name="quickstart")
        >>> loc.study_name, loc.run_dir.name
        ('quickstart', 'q')
    """
    run_dir: Path | None = None
    if space is not None:
        from autoprune.search import default_storage, default_study_name, load_search_space

        sp = load_search_space(space)  # its errors name the file
        study_name = study_name or default_study_name(sp)
        run_dir = Path(sp.run_config().run_dir).resolve()
        storage = storage or default_storage(run_dir, study_name)
    if storage is None:
        raise StudyError("no study given: pass a search space file (space) or a storage URL (storage)")
    if run_dir is None and storage.startswith("sqlite:///"):
        run_dir = Path(storage[len("sqlite:///"):]).parent
    return StudyLocation(storage=storage, study_name=study_name, run_dir=run_dir)


def load_study(space: str | Path | None = None, *, study_name: str | None = None,
               storage: str | None = None) -> Any:
    """Open an existing study (an ``optuna.Study``) located as by :func:`locate`.

    Example:
        >>> study = load_study("search_spaces/quickstart.yaml")  # doctest: +SKIP
        >>> [r.number for r in front(study)]  # doctest: +SKIP
    """
    return locate(space, study_name=study_name, storage=storage).open()


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TrialRecord:
    """One trial as plain data.

    ``state`` is Optuna's (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``); ``label`` says
    the same for people, except that the driver's bookkeeping trials read ``duplicate skipped`` and
    ``re-enqueued``. ``counted``: whether the trial counts towards ``n_trials``. ``accuracy`` and
    ``speedup`` are the objective values (COMPLETE trials only). ``rung``: the fidelity level a
    multi-fidelity search ran the trial at (None: the trial ran at full fidelity).
    """

    number: int
    state: str
    label: str
    counted: bool
    accuracy: float | None
    speedup: float | None
    policy: dict[str, Any]
    summary: str
    result: dict[str, Any] | None
    history: list[list[float]]
    reason: str | None
    node_id: str | None
    rung: int | None
    datetime_start: _dt.datetime | None
    datetime_complete: _dt.datetime | None
    user_attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        """A COMPLETE trial with both objective values."""
        return self.state == "COMPLETE" and self.accuracy is not None and self.speedup is not None

    @property
    def criterion(self) -> str:
        return str(self.policy.get("criterion", "?"))

    @property
    def granularity(self) -> str:
        return str(self.policy.get("granularity", "structured"))

    @property
    def budget(self) -> dict[str, Any] | None:
        """What a multi-fidelity rung ran the trial with (``retrain_steps``, ``reconstruct``); None otherwise."""
        b = self.user_attrs.get(S.T_BUDGET)
        return dict(b) if isinstance(b, dict) else None

    @property
    def source_trial(self) -> int | None:
        """The trial one rung below this one was promoted from (multi-fidelity searches; None at rung 0)."""
        v = self.user_attrs.get(S.T_SOURCE)
        return int(v) if isinstance(v, (int, float)) else None

    @property
    def final_of(self) -> tuple[int, int] | None:
        """``(rung, trial)`` for a top-rung trial that runs a lower rung's policy as that rung ran it
        (a rung with ``also_final``); None otherwise."""
        v = self.user_attrs.get(S.T_FINAL_OF)
        return (int(v["rung"]), int(v["trial"])) if isinstance(v, dict) else None

    @property
    def target_policy(self) -> dict[str, Any]:
        """The policy at its full budget (what a multi-fidelity search promotes); ``policy`` otherwise."""
        v = self.user_attrs.get(S.T_TARGET_POLICY)
        return dict(v) if isinstance(v, dict) else self.policy

    @property
    def duration_s(self) -> float | None:
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return (self.datetime_complete - self.datetime_start).total_seconds()


def record_of(trial: Any) -> TrialRecord:
    """One Optuna ``FrozenTrial`` as a :class:`TrialRecord`."""
    from autoprune.search._driver import T_NODE, counts

    ua = trial.user_attrs
    values = trial.values if trial.values is not None and len(trial.values) >= 2 else None
    rung = ua.get(S.T_RUNG)
    return TrialRecord(
        number=trial.number, state=trial.state.name, label=S.state_label(trial), counted=counts(trial),
        accuracy=float(values[0]) if values else None, speedup=float(values[1]) if values else None,
        policy=dict(ua.get(S.T_POLICY) or {}), summary=ua.get(S.T_SUMMARY) or "",
        result=dict(ua[S.T_RESULT]) if isinstance(ua.get(S.T_RESULT), dict) else None,
        history=list(ua.get(S.T_HISTORY) or []), reason=ua.get(S.T_FAIL) or ua.get(S.T_PRUNE),
        node_id=ua.get(T_NODE), rung=int(rung) if isinstance(rung, (int, float)) else None,
        datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete, user_attrs=dict(ua))


def trial_records(study: Any) -> list[TrialRecord]:
    """Every trial of ``study`` as a :class:`TrialRecord`, by trial number.

    Example:
        >>> import optuna
        >>> s = optuna.create_study(directions=["maximize", "maximize"])
        >>> s.add_trial(optuna.trial.create_trial(values=[0.9, 1.5], user_attrs={"policy_summary": "l1 x1"}))
        >>> s.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
        ...                                       user_attrs={"duplicate": True}))
        >>> [(r.number, r.state, r.label, r.counted, r.summary) for r in trial_records(s)]
        [(0, 'COMPLETE', 'complete', True, 'l1 x1'), (1, 'FAIL', 'duplicate skipped', False, '')]
    """
    return sorted((record_of(t) for t in study.get_trials(deepcopy=False)), key=lambda r: r.number)


Trials = Union[Any, Sequence[TrialRecord]]  # an optuna.Study or records already read from one


def _records(trials: Trials) -> list[TrialRecord]:
    if hasattr(trials, "get_trials"):
        return trial_records(trials)
    return list(trials)


def counted_trials(trials: Trials, first: int | None = None) -> list[TrialRecord]:
    """The trials that count towards ``n_trials``, by number; with ``first``, only the first ``first``
    of them: how a study that ran further is compared with another at the same trial count.

    Example:
        >>> import optuna
        >>> s = optuna.create_study(directions=["maximize", "maximize"])
        >>> s.add_trial(optuna.trial.create_trial(values=[0.9, 1.5]))
        >>> s.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"orphaned": True}))
        >>> s.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
        >>> [r.number for r in counted_trials(s)], [r.number for r in counted_trials(s, first=1)]
        ([0, 2], [0])
    """
    out = [r for r in _records(trials) if r.counted]
    return out if first is None else out[:first]


def completed_trials(trials: Trials) -> list[TrialRecord]:
    """The COMPLETE trials with both objective values, by number."""
    return [r for r in _records(trials) if r.complete]


def top_rung(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The records at the highest rung among them; a record without a rung counts as top-rung."""
    recs = list(records)
    rungs = [r.rung for r in recs if r.rung is not None]
    top = max(rungs) if rungs else None
    return [r for r in recs if r.rung is None or r.rung == top]


def _dominates(a: TrialRecord, b: TrialRecord) -> bool:
    assert a.accuracy is not None and a.speedup is not None and b.accuracy is not None and b.speedup is not None
    return (a.accuracy >= b.accuracy and a.speedup >= b.speedup
            and (a.accuracy > b.accuracy or a.speedup > b.speedup))


def front(trials: Trials, *, top_rung_only: bool = True) -> list[TrialRecord]:
    """The Pareto front of the completed trials (accuracy and speedup both maximised), by speedup.

    A trial is on the front when no other completed trial is at least as good in both objectives and
    better in one (two trials with equal values are both on it, as in ``optuna.Study.best_trials``).
    With ``top_rung_only`` (the default) trials of a lower fidelity rung are left out first.
    """
    done = completed_trials(trials)
    if top_rung_only:
        done = top_rung(done)
    on = [r for r in done if not any(_dominates(o, r) for o in done)]
    return sorted(on, key=lambda r: (r.speedup, r.number))


# ----------------------------------------------------------------------------- hypervolume
def reference_point(dense_accuracy: float, margin: float = REF_MARGIN) -> tuple[float, float]:
    """The hypervolume's reference point for a dense model of validation accuracy ``dense_accuracy``:
    ``margin`` below it, at speedup 1.0.

    Example:
        >>> reference_point(0.9)
        (0.85, 1.0)
    """
    return (dense_accuracy - margin, 1.0)


Point = tuple[float, float]  # (accuracy, speedup)


def _points(trials: Trials | Iterable[Point], top_rung_only: bool) -> list[Point]:
    if hasattr(trials, "get_trials"):
        return [(r.accuracy, r.speedup) for r in front(trials, top_rung_only=top_rung_only)]  # type: ignore[misc]
    items = list(trials)  # type: ignore[arg-type]
    if items and isinstance(items[0], TrialRecord):
        return [(r.accuracy, r.speedup) for r in front(items, top_rung_only=top_rung_only)]  # type: ignore[misc]
    return [(float(a), float(s)) for a, s in items]


def hypervolume(trials: Trials | Iterable[Point], reference: Point, *, top_rung_only: bool = True) -> float:
    """Area dominated by the front of ``trials`` above ``reference`` (accuracy, speedup; both maximised).

    ``trials`` is a study, a list of :class:`TrialRecord` (their completed ones count) or a list of
    ``(accuracy, speedup)`` points. Exact in two dimensions; rounded to 10 decimals so that tables
    printed from it do not flicker in the last digit.

    Example:
        >>> hypervolume([(0.9, 2.0), (0.95, 1.5), (0.80, 3.0)], (0.85, 1.0))  # the last is below the reference
        0.075
    """
    pts = sorted(((s, a) for a, s in _points(trials, top_rung_only) if a > reference[0] and s > reference[1]),
                 reverse=True)
    area, best = 0.0, reference[0]
    for i, (s, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else reference[1]
        area += (s - nxt) * (best - reference[0])
    return round(area, 10)


# ----------------------------------------------------------------------------- study attributes
@dataclass(frozen=True)
class StudyInfo:
    """What the search recorded about the study as a whole (see :mod:`autoprune._study`).

    ``config``: the run configuration (JSON-able); ``space``: the raw search space; ``dense``: the
    dense baseline's metrics (``accuracy``, ``macro_f1``, ...); ``accuracy_floor``: the accuracy below
    which trials were stopped early (None: no floor); ``baseline_dir``: the cached dense baseline.
    """

    name: str
    config: dict[str, Any]
    space: dict[str, Any]
    dense: dict[str, Any]
    accuracy_floor: float | None
    baseline_dir: str | None
    version: str | None


def study_info(study: Any) -> StudyInfo:
    """The study-level attributes of ``study``; a study not written by a search gives empty fields.

    Example:
        >>> import optuna
        >>> s = optuna.create_study(directions=["maximize", "maximize"], study_name="demo")
        >>> s.set_user_attr("accuracy_floor", 0.85)
        >>> info = study_info(s)
        >>> info.name, info.accuracy_floor, info.dense
        ('demo', 0.85, {})
    """
    ua = study.user_attrs

    def mapping(key: str) -> dict[str, Any]:
        v = ua.get(key)
        return dict(v) if isinstance(v, dict) else {}

    floor = ua.get(S.ATTR_FLOOR)
    return StudyInfo(name=study.study_name, config=mapping(S.ATTR_CONFIG), space=mapping(S.ATTR_SPACE),
                     dense=mapping(S.ATTR_DENSE), accuracy_floor=float(floor) if isinstance(floor, (int, float)) else None,
                     baseline_dir=ua.get(S.ATTR_BASELINE_DIR) or None, version=ua.get(S.ATTR_VERSION))


def dense_accuracy(study: Any) -> float | None:
    """The dense baseline's validation accuracy recorded on the study (or on its first trial result)."""
    dense = study_info(study).dense
    for k in ("accuracy", "validation_accuracy"):
        if isinstance(dense.get(k), (int, float)):
            return float(dense[k])
    for r in completed_trials(study):
        if isinstance((r.result or {}).get("dense_accuracy"), (int, float)):
            return float(r.result["dense_accuracy"])  # type: ignore[index]
    return None


# ----------------------------------------------------------------------------- rungs
@dataclass(frozen=True)
class RungInfo:
    """One rung of a multi-fidelity search.

    ``index`` (0 = cheapest), ``study_name`` (the top rung is the study the search was named for),
    ``spec`` (the rung as the space gives it: ``retrain_steps`` (a number or ``full``), ``reconstruct``),
    ``records`` (its trials), ``promoted_to`` (trial number here -> trial number at the next rung; empty
    at the top), ``finals`` (trial number here -> the top-rung trial that ran its policy as it ran here:
    a rung with ``also_final``).
    """

    index: int
    study_name: str
    spec: dict[str, Any]
    top: bool
    records: list[TrialRecord]
    promoted_to: dict[int, int]
    finals: dict[int, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``rung 0 (0 steps, least_squares)``, ``rung 2 (full budget)``."""
        from autoprune.search._space import Rung

        return f"rung {self.index} ({Rung.model_validate(self.spec).label()})"

    @property
    def finished(self) -> list[TrialRecord]:
        """Its trials that count (complete, stopped early, failed; not bookkeeping)."""
        return [r for r in self.records if r.counted]


def rungs(study: Any) -> list[RungInfo]:
    """The rungs of the multi-fidelity search whose top rung ``study`` holds, rung 0 first and ``study``
    last; ``[]`` for a study searched without rungs. The lower rungs' studies are read from the same
    storage (``<name>.rung0``, ``<name>.rung1``, ...); promotions are read from each promoted trial's
    ``source_trial``.

    Example:
        >>> import optuna
        >>> rungs(optuna.create_study(directions=["maximize", "maximize"]))
        []
    """
    import optuna

    ua = study.user_attrs
    specs, names = ua.get(S.ATTR_RUNGS), ua.get(S.ATTR_RUNG_STUDIES)
    if not specs or names is None:
        return []
    studies = []
    for n in names:
        try:
            studies.append(optuna.load_study(study_name=n, storage=study._storage))
        except KeyError:
            raise StudyError(f"study '{study.study_name}' lists its rung study '{n}', which is not in its storage; "
                             f"it was deleted or the study was copied without it (copy every '{study.study_name}.rung*' "
                             f"study along)") from None
    studies.append(study)
    recs = [trial_records(st) for st in studies]
    live_top = [r for r in recs[-1] if r.final_of is not None and r.label != S.LABEL_ORPHANED]
    out = []
    for k, st in enumerate(studies):
        up = recs[k + 1] if k + 1 < len(studies) else []
        promoted = {r.source_trial: r.number for r in up if r.source_trial is not None and r.label != S.LABEL_ORPHANED}
        finals = {r.final_of[1]: r.number for r in live_top if r.final_of[0] == k}  # type: ignore[index]
        out.append(RungInfo(index=k, study_name=st.study_name, spec=dict(specs[k]), top=k == len(studies) - 1,
                            records=recs[k], promoted_to={int(a): b for a, b in sorted(promoted.items())},
                            finals=dict(sorted(finals.items()))))
    return out


# ----------------------------------------------------------------------------- results recorded outside a search
def create_study(study_name: str, storage: str | None = None) -> Any:
    """A study with the search's objectives (accuracy, speedup; both maximised, metric names set), or
    the existing one of that name: for results recorded outside a search, e.g. a fixed sweep of policies
    that should read like a search's trials. ``storage=None`` keeps the study in memory."""
    import warnings

    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage, directions=S.DIRECTIONS,
                                load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(S.METRIC_NAMES)
    return study


def record_result(study: Any, policy: Any, result: Any, **user_attrs: Any) -> int:
    """Add a finished trial to ``study`` the way the search records one: values (accuracy, speedup),
    the policy, its summary, the whole result and the validation history; returns the trial number.
    ``policy`` is a :class:`~autoprune.policy.PruningPolicy`, ``result`` a
    :class:`~autoprune.results.TrialResult`; extra JSON-able ``user_attrs`` are stored beside them.

    Example:
        >>> import optuna
        >>> from autoprune.policy import PruningPolicy
        >>> from autoprune.testing import fake_result
        >>> s = create_study("sweep")
        >>> pol = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5)
        >>> record_result(s, pol, fake_result(pol, accuracy=0.88, speedup=1.6), wall_seconds=3.0)
        0
        >>> r = trial_records(s)[0]
        >>> r.accuracy, r.speedup, r.summary == pol.summary(), r.user_attrs["wall_seconds"]
        (0.88, 1.6, True, 3.0)
    """
    import optuna

    res = result.to_dict()
    study.add_trial(optuna.trial.create_trial(
        values=[float(res["accuracy"]), float(res["speedup"])],
        user_attrs={S.T_POLICY: policy.to_dict(), S.T_SUMMARY: policy.summary(), S.T_RESULT: res,
                    S.T_HISTORY: res.get("history") or [], **user_attrs}))
    return study.get_trials(deepcopy=False)[-1].number


__all__ = ["REF_MARGIN", "RungInfo", "StudyInfo", "StudyLocation", "TrialRecord", "rungs", "completed_trials", "counted_trials",
           "create_study", "dense_accuracy", "front", "hypervolume", "load_study", "locate", "record_result",
           "record_of", "reference_point", "study_info", "top_rung", "trial_records"]
