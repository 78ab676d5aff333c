"""Fake trial functions for tests, examples and the search-overhead benchmark (like ``optuna.testing``).

A fake trial takes the place of :func:`autoprune.trial.run_trial` in :func:`autoprune.search.run_search`
(``trial_fn=``): it returns a plausible :class:`~autoprune.results.TrialResult` without loading a model.

* :func:`fake_trial`: sleeps, reports a few evaluations, returns metrics computed from the policy
  (more sparsity: faster, less accurate); options inject failures.
* :func:`sleep_trial`: exactly ``sleep`` seconds and fixed metrics.
* :func:`fake_result`: a TrialResult of given accuracy and speedup.

Example:
    >>> import functools
    >>> from autoprune.policy import PruningPolicy
    >>> r = functools.partial(sleep_trial, sleep=0.0)(None, PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5))
    >>> r.accuracy, r.speedup
    (0.85, 1.5)
"""

from __future__ import annotations

from autoprune.search._fake import fake_result, fake_trial, sleep_trial

__all__ = ["fake_result", "fake_trial", "sleep_trial"]
