"""Fault injection (short): 3 driver SIGKILLs at random moments, a Ray worker SIGKILLed mid-trial, one
NaN trial and one raising trial; the study must lose nothing. The full run (10 kills) is
``python scripts/chaos_search.py``; its output is in docs/RELIABILITY.md."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO

pytest.importorskip("ray")
pytest.importorskip("optuna")


def load_chaos():
    spec = importlib.util.spec_from_file_location("chaos_search", REPO / "scripts" / "chaos_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fault_token_stays_with_the_trial_that_took_it(tmp_path):
    """A worker SIGKILLed after taking the NaN token: Ray's retry of the same trial (same policy) takes
    the fault again, another trial does not, and the one that took it reports NaN every time."""
    import math

    from autoprune.policy import PruningPolicy
    from autoprune.search._fake import _claim, _trial_key, fake_trial

    (tmp_path / "nan").touch()
    first = PruningPolicy.uniform("l1", 2, heads=0.5, ffn=0.5).model_copy(update={"seed": 3})
    other = first.model_copy(update={"seed": 4})
    assert _claim(str(tmp_path), "nan", _trial_key(first))  # the killed attempt took the token
    assert not (tmp_path / "nan").exists()
    retry = fake_trial(None, first, sleep=0.0, fault_dir=str(tmp_path))
    assert math.isnan(retry.accuracy)
    assert not math.isnan(fake_trial(None, other, sleep=0.0, fault_dir=str(tmp_path)).accuracy)
    assert math.isnan(fake_trial(None, first, sleep=0.0, fault_dir=str(tmp_path)).accuracy)


@pytest.mark.slow
def test_chaos_three_driver_kills(tmp_path):
    chaos = load_chaos()
    lines: list[str] = []
    rep = chaos.Chaos(tmp_path, None, n_trials=8, kills=3, sleep=1.0, seed=1, time_limit=150, log=lines.append).run()
    text = chaos.report(rep) + "\n" + "\n".join(lines)
    assert rep["completed_lost"] == [], text
    assert rep["duplicates"] == [], text
    assert rep["left_running_or_waiting"] == [], text
    assert rep["reached_n_trials"] and rep["counted"] == 8, text
    assert rep["driver_kills"] == 3, text
    assert len(rep["nan_trial"]) == 1 and len(rep["raising_trial"]) == 1, text
    assert rep["worker_kill"] is not None and rep["worker_lost_failures"] == [], text
    assert rep["ok"], text
