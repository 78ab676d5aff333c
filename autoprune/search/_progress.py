"""Live progress of a search (rich, on stderr): trial counts, elapsed time, front size and the
best accuracy reached at each speedup level.

Example:
    >>> best_at_levels([(0.9, 1.1), (0.85, 1.6), (0.8, 2.2)], levels=(1.0, 1.5, 2.0, 3.0))
    {1.0: 0.9, 1.5: 0.85, 2.0: 0.8, 3.0: None}
"""

from __future__ import annotations

import time
from typing import Any

LEVELS = (1.0, 1.25, 1.5, 2.0, 3.0)


def best_at_levels(points: list[tuple[float, float]], levels: tuple[float, ...] = LEVELS) -> dict[float, float | None]:
    """For each speedup level, the best accuracy among (accuracy, speedup) points at least that fast."""
    return {lv: max((a for a, s in points if s >= lv), default=None) for lv in levels}


def summarize(study: Any, running: int = 0) -> dict[str, Any]:
    """Counts and front statistics of a study (plain data; used by the live display and logs)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    skipped = 0
    points = []
    for t in trials:
        if t.state == TrialState.FAIL and (t.user_attrs.get("orphaned") or t.user_attrs.get("duplicate")):
            skipped += 1  # re-enqueued after a driver stop, or a duplicate policy: not counted
        elif t.state.name in by:
            by[t.state.name] += 1
        if t.state == TrialState.COMPLETE and t.values:
            points.append((t.values[0], t.values[1]))
    front = len(study.best_trials) if points else 0
    return {"complete": by["COMPLETE"], "pruned": by["PRUNED"], "failed": by["FAIL"], "running": running,
            "skipped": skipped, "front": front, "best": best_at_levels(points)}


class Progress:
    """Context manager around a rich ``Live`` table; a no-op when disabled."""

    def __init__(self, study: Any, target: int, enabled: bool = True, refresh_s: float = 2.0) -> None:
        self.study, self.target, self.enabled, self.refresh_s = study, target, enabled, refresh_s
        self.t0 = time.time()
        self._last = 0.0
        self._live: Any = None

    def _render(self, running: int) -> Any:
        from rich.text import Text

        s = summarize(self.study, running)
        el = time.time() - self.t0
        done = s["complete"] + s["pruned"] + s["failed"]
        best = "  ".join(f">={lv:g}x: {'-' if v is None else f'{v:.4f}'}" for lv, v in s["best"].items())
        return Text(
            f"search '{self.study.study_name}'  {int(el // 60)}m{int(el % 60):02d}s  "
            f"finished {done}/{self.target} (complete {s['complete']}, pruned {s['pruned']}, failed {s['failed']}"
            + (f", {s['skipped']} skipped/re-run" if s["skipped"] else "") + ")  "
            f"running {running}  front {s['front']}\n  best accuracy at speedup {best}")

    def update(self, running: int = 0, force: bool = False) -> None:
        if not self.enabled or self._live is None:
            return
        now = time.time()
        if force or now - self._last >= self.refresh_s:
            self._last = now
            self._live.update(self._render(running))

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(0), console=Console(stderr=True), refresh_per_second=1, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            try:
                self._live.update(self._render(0))
            finally:
                self._live.__exit__(*exc)
