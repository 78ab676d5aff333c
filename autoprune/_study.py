"""How autoprune records a search in an Optuna study: the one schema the search writes and
the dashboard, status and export read. Only plain JSON-able data is stored.

Study
  * directions ``["maximize", "maximize"]``, metric names ``["accuracy", "speedup"]``
    (set with ``study.set_metric_names`` so ``optuna-dashboard`` shows them).
  * ``study.user_attrs``: ``config`` (RunConfig as JSON-able dict), ``space`` (raw search space),
    ``dense`` (dense baseline metrics dict: accuracy, macro_f1, params, flops...),
    ``accuracy_floor`` (float), ``baseline_dir`` (str), ``autoprune_version``.
  * multi-fidelity search: the study the user names holds the top rung; it records ``rungs`` (the
    rung list of the space, JSON) and ``rung_studies`` (the names of the lower rungs' studies, rung 0
    first: ``<name>.rung0``, ``<name>.rung1``, ...). Each lower-rung study records ``rung_of`` (the
    top study's name) and ``rung`` (its index) besides the attributes above.
Trial
  * ``values`` = [validation accuracy, measured speedup] for COMPLETE trials.
  * ``user_attrs``: ``policy`` (PruningPolicy.to_dict()), ``policy_summary`` (str),
    ``result`` (TrialResult.to_dict(), COMPLETE only), ``history`` ([[step, accuracy], ...]),
    ``fail_reason`` (str, FAIL only), ``prune_reason`` (str, PRUNED only), ``rung`` (int, optional:
    the fidelity level of a multi-fidelity search; a trial without it ran at full fidelity).
  * multi-fidelity trials also carry ``budget`` ({retrain_steps, reconstruct}: what the rung ran),
    ``target_policy`` (the policy at its full budget: what promotion carries up; ``policy`` is the
    policy as the rung ran it) and, above rung 0, ``source_trial`` (the number of the trial at the
    rung below it was promoted from; finished trials cannot be changed, so the link is stored once,
    on the promoted trial). A top-rung trial that runs a lower rung's policy as that rung ran it (a
    rung with ``also_final``) carries ``final_of`` ({rung, trial}: where it ran first) instead of
    ``source_trial``; its ``target_policy`` is that policy.

Read a study through :mod:`autoprune.study`, not through these names.
"""

from __future__ import annotations

from typing import Any

METRIC_NAMES = ["accuracy", "speedup"]
DIRECTIONS = ["maximize", "maximize"]

ATTR_CONFIG = "config"
ATTR_SPACE = "space"
ATTR_DENSE = "dense"
ATTR_FLOOR = "accuracy_floor"
ATTR_BASELINE_DIR = "baseline_dir"
ATTR_VERSION = "autoprune_version"

T_POLICY = "policy"
T_SUMMARY = "policy_summary"
T_RESULT = "result"
T_HISTORY = "history"
T_FAIL = "fail_reason"
T_PRUNE = "prune_reason"
T_ORPHANED = "orphaned"      # FAIL trial left RUNNING by a dead driver (not counted; re-enqueued)
T_DUPLICATE = "duplicate"    # FAIL trial whose policy was already tried (not counted, never run)
T_RUNG = "rung"              # fidelity level of a multi-fidelity search (absent: full fidelity)
T_BUDGET = "budget"          # what the rung ran: {"retrain_steps": int, "reconstruct": str}
T_TARGET_POLICY = "target_policy"  # the policy at its full budget (multi-fidelity)
T_SOURCE = "source_trial"    # number of the trial at the rung below this one was promoted from
T_FINAL_OF = "final_of"      # top-rung trial of a lower rung's policy as that rung ran it: {"rung", "trial"}

ATTR_RUNGS = "rungs"                # top study: the space's rung list
ATTR_RUNG_STUDIES = "rung_studies"  # top study: names of the lower rungs' studies, rung 0 first
ATTR_RUNG_OF = "rung_of"            # lower-rung study: the name of its top study
ATTR_RUNG = "rung"                  # lower-rung study: its rung index


LABEL_DUPLICATE = "duplicate skipped"
LABEL_ORPHANED = "re-enqueued"
BOOKKEEPING_LABELS = (LABEL_DUPLICATE, LABEL_ORPHANED)


def state_label(trial: Any) -> str:
    """The trial's state for people: Optuna's state, except that the driver's bookkeeping FAIL
    trials (a skipped duplicate policy, a trial re-enqueued after its driver died) say so."""
    name = trial.state.name.lower()
    if name == "fail" and trial.user_attrs.get(T_DUPLICATE):
        return LABEL_DUPLICATE
    if name == "fail" and trial.user_attrs.get(T_ORPHANED):
        return LABEL_ORPHANED
    return name


def pareto_numbers(study: Any) -> set[int]:
    """Numbers of the trials on the Pareto front (COMPLETE trials only, as Optuna computes it)."""
    return {t.number for t in study.best_trials}
