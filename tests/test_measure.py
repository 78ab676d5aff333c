"""Metrics, sizes and the interleaved speed measurement: its spread, its extra rounds and its flags."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from autoprune.measure import classification_metrics, count_params, measure_speed, nonzero_params, speed_flags


class _Clock:
    """A fake ``time.perf_counter``: it moves only when a :class:`_Sleeper` runs, so timings are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Sleeper(nn.Module):
    """A 'model' whose forward takes the next duration of a cycle (milliseconds) on the fake clock."""

    def __init__(self, clock: _Clock, ms: list[float]):
        super().__init__()
        self.config = type("C", (), {"vocab_size": 50})()
        self._clock, self._ms = clock, itertools.cycle(ms)
        self.calls = 0

    def forward(self, **_: torch.Tensor) -> None:
        self.calls += 1
        self._clock.now += next(self._ms) / 1000.0


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr("autoprune.measure.time.perf_counter", c)
    return c


def test_classification_metrics_on_a_hand_made_case():
    m = classification_metrics(preds=[0, 0, 1, 1, 1], labels=[0, 1, 1, 1, 0], num_labels=2)
    assert m.accuracy == pytest.approx(3 / 5) and m.n == 5
    assert m.per_class_recall == pytest.approx([1 / 2, 2 / 3])
    # F1 class 0: p=1/2 r=1/2 -> 1/2; class 1: p=2/3 r=2/3 -> 2/3
    assert m.macro_f1 == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_params_count_pruned_zeros_but_nonzero_does_not():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight[0] = 0
    assert count_params(lin) == 10 and nonzero_params(lin) == 6


def test_a_steady_measurement_takes_its_repeats_and_is_not_noisy(clock):
    dense, pruned = _Sleeper(clock, [4.0, 4.2]), _Sleeper(clock, [2.0])
    rep = measure_speed(dense, pruned, batch_size=1, seq_len=4, warmup=1, repeats=5, batch1=False,
                        max_spread=0.10, max_repeats=15)
    assert rep.rounds == 5 and not rep.noisy
    # dense rounds take 4.2, 4.0, 4.2, 4.0, 4.2 ms (the warm-up took the first 4.0): median 4.2 against 2.0
    assert rep.speedup == pytest.approx(2.1) and (rep.speedup_q1, rep.speedup_q3) == pytest.approx((2.0, 2.1))


def test_a_noisy_measurement_takes_more_rounds_up_to_the_bound_then_is_flagged(clock):
    # the pruned model alternates 1 ms and 8 ms: per-round speedups spread far more than 10 %
    dense, pruned = _Sleeper(clock, [4.0]), _Sleeper(clock, [1.0, 8.0])
    rep = measure_speed(dense, pruned, batch_size=1, seq_len=4, warmup=1, repeats=4, batch1=False,
                        max_spread=0.10, max_repeats=12)
    assert rep.rounds == 12 and rep.noisy
    assert pruned.calls == 12 + 3  # the rounds, plus one warm-up call for the first block and each of 2 more


@pytest.mark.parametrize("speedup, flops, quantized, noisy, expected", [
    (1.9, 2.0, False, False, []),
    (0.4, 1.0, False, False, ["slower than half of dense"]),
    (3.5, 2.0, False, False, ["faster than its FLOPs allow"]),
    (3.5, 2.0, True, False, []),          # int8 kernels may beat the FLOPs reduction
    (1.2, 1.0, False, True, ["noisy"]),
])
def test_speed_flags(speedup, flops, quantized, noisy, expected):
    assert speed_flags(speedup, flops, quantized=quantized, noisy=noisy) == expected


def test_flagged_speed_shows_in_status_the_dashboard_hover_and_the_export_readme(tmp_path):
    import json

    import optuna
    from optuna.trial import create_trial
    from typer.testing import CliRunner

    from autoprune import _study as S
    from autoprune.cli import app
    from autoprune.export import _readme
    from autoprune.policy import PruningPolicy
    from autoprune.study import trial_records
    from autoprune.testing import fake_result
    from autoprune.visualization import hover_text

    url = f"sqlite:///{tmp_path / 's.db'}"
    st = optuna.create_study(directions=S.DIRECTIONS, storage=url, study_name="s")
    pol = PruningPolicy.uniform("l1", 2, heads=0.5)
    res = fake_result(pol, 0.85, 9.0).to_dict()
    res["speed_flags"] = speed_flags(9.0, 2.0, noisy=True)
    st.add_trial(create_trial(values=[0.85, 9.0], user_attrs={S.T_POLICY: pol.to_dict(), S.T_RESULT: res,
                                                              S.T_SUMMARY: pol.summary()}))
    r = CliRunner().invoke(app, ["status", "--storage", url, "--study", "s", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["speed_flags"] == ["noisy", "faster than its FLOPs allow"]
    r = CliRunner().invoke(app, ["status", "--storage", url, "--study", "s"], env={"COLUMNS": "200"})
    assert "noisy; faster than its" in r.stdout
    assert "speedup flagged: noisy; faster than its FLOPs allow" in hover_text(trial_records(st)[0])
    info = {"metrics": res, "source": {"description": "x"}, "id2label": {"0": "neg", "1": "pos"},
            "policy": pol.to_dict(), "study": "s", "trial": 0, "policy_summary": pol.summary(), "quantized": False,
            "dir_name": "export"}
    text = _readme(info)
    assert "The measured speedup is flagged: noisy; faster than its FLOPs allow" in text
