"""The layer-dropping benchmark's speedup matching: which drop count, which head/FFN fraction, and the
plan of the three levers it compares at one target (``benchmarks/layer_dropping.py``)."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

from conftest import REPO

from autoprune.errors import AutopruneError

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ld = importlib.import_module("benchmarks.layer_dropping")


def test_module_imports_no_private_module_its_examples_run_and_it_offers_a_results_file():
    src = (REPO / "benchmarks" / "layer_dropping.py").read_text()
    assert "autoprune._" not in src
    res = doctest.testmod(ld, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "layer_dropping.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=REPO / "tests")
    assert proc.returncode == 0, proc.stderr
    assert "--results" in proc.stdout and "--steps" in proc.stdout


def test_drop_count_is_nearest_on_a_ratio_scale():
    # 1.48x is nearer 1.2x in difference (0.28 against 0.32) but nearer 1.8x in ratio (1.22 against 1.23)
    assert ld.nearest_count({1: 1.2, 2: 1.8}, 1.48) == 2
    assert ld.nearest_count({1: 1.2, 2: 1.8}, 1.3) == 1
    with pytest.raises(AutopruneError, match="no drop count"):
        ld.nearest_count({}, 1.5)


def test_fraction_interpolates_and_reads_noisy_timings_as_monotone():
    pts = [(0.0, 1.0), (0.4, 1.4), (0.6, 2.0)]
    assert ld.match_fraction(pts, 1.4) == 0.4          # a timed point is returned as it is
    assert ld.match_fraction(pts, 1.7) == 0.5          # halfway in speedup between 0.4 and 0.6
    assert ld.match_fraction(list(reversed(pts)), 1.7) == 0.5  # order of the points does not matter
    # 0.4 timed slower than 0.2 (noise): the smallest fraction measured to reach 1.3x is 0.2
    assert ld.match_fraction([(0.0, 1.0), (0.2, 1.3), (0.4, 1.25), (0.6, 2.0)], 1.3) == 0.2


@pytest.mark.parametrize("target", [0.9, 2.5])
def test_fraction_outside_the_timed_range_is_one_error_not_an_extrapolation(target):
    with pytest.raises(AutopruneError, match="widen the calibration grid"):
        ld.match_fraction([(0.0, 1.0), (0.6, 2.0)], target)
    with pytest.raises(AutopruneError, match="at least two"):
        ld.match_fraction([(0.3, 1.4)], 1.4)


class _Timings:
    """A calibrator whose cuts take time in proportion to the work left: 6 equal layers, a fixed 5% of the
    dense time outside them, heads and FFN neurons removed in proportion (no timing, no model)."""

    depth = 6

    def __init__(self):
        self.timed: list[tuple[int, float]] = []

    def speedup(self, drop: int, fraction: float) -> float:
        self.timed.append((drop, fraction))
        return 1.0 / (0.05 + 0.95 * (self.depth - drop) / self.depth * (1.0 - fraction))

    fraction_for = ld.Calibrator.fraction_for


def test_plan_matches_every_lever_to_the_speedup_dropping_layers_gave():
    cal = _Timings()
    plans = ld.plan(cal, [1.5, 2.0])
    (p15, p20) = plans
    assert p15["levers"]["layers"] == (2, 0.0) and p20["levers"]["layers"] == (3, 0.0)
    # both: the drop count nearest the square root of the target, fewer than the layers lever drops
    assert p15["levers"]["both"][0] == 1 and p20["levers"]["both"][0] == 2
    for p in plans:
        assert p["matched_speedup"] == pytest.approx(cal.speedup(*p["levers"]["layers"]))
        for lever in ("units", "both"):
            drop, frac = p["levers"][lever]
            assert 0 < frac < 1
            # linear interpolation between grid points of a convex curve: within 3% of the matched speedup
            assert cal.speedup(drop, frac) == pytest.approx(p["matched_speedup"], rel=0.03)
    # drop counts are timed until one is clearly past the largest target, not all of them
    assert max(d for d, f in cal.timed if f == 0.0) == 4


def test_plan_refuses_a_target_that_one_dropped_layer_reaches():
    with pytest.raises(AutopruneError, match="drops two or more"):
        ld.plan(_Timings(), [1.1])
