"""The search service: an Optuna multi-objective study (accuracy up, speedup up) whose trials
run as Ray tasks, driven by one process with plain ask/tell.

Public API:
    * :class:`SearchSpace`, :func:`load_search_space` - validated YAML search spaces.
    * :func:`run_search`, :func:`resume` - run or continue a study (SQLite by default, any Optuna URL).
    * :func:`study_status` - one plain dict per trial; :func:`open_study` - load a study by name.
    * :func:`mask_url` - hide the password of a storage URL; :func:`check_study_name` - the names a study may have.
    * :func:`make_sampler` - the Optuna sampler a space names; :func:`policy_key` - what makes two
      sampled policies the same (the driver skips duplicates by it).
    * :class:`RayExecutor` (default), :class:`InProcessExecutor` - where trials run (``run_search(executor=...)``).

A space with ``rungs`` runs a multi-fidelity search (``_rungs``: one study per rung, the named study
holding the top rung; ``_promotion``: the promotion rule); :func:`autoprune.study.rungs` reads it back.

Example:
    >>> from autoprune.search import load_search_space, run_search, study_status
    >>> space = load_search_space("search_spaces/quickstart.yaml")  # doctest: +SKIP
    >>> study = run_search(space)  # doctest: +SKIP
    >>> [r["accuracy"] for r in study_status("quickstart", "sqlite:///runs/quickstart/quickstart.db")]  # doctest: +SKIP
"""

from __future__ import annotations

from autoprune.search._driver import _policy_key as policy_key
from autoprune.search._driver import default_study_name, make_sampler, resume, run_search, study_status
from autoprune.search._executor import InProcessExecutor, RayExecutor, TrialJob
from autoprune.search._space import SearchSpace, load_search_space, space_from_dict
from autoprune.search._dispatch import ray_temp_dir
from autoprune.search._storage import check_study_name, default_storage, get_storage, mask_url, open_study

__all__ = ["SearchSpace", "load_search_space", "space_from_dict", "run_search", "resume", "study_status",
           "open_study", "mask_url", "default_storage", "default_study_name", "check_study_name", "make_sampler",
           "policy_key", "get_storage", "ray_temp_dir", "RayExecutor", "InProcessExecutor", "TrialJob"]
