"""Progress of a search on stderr: a live rich line on a terminal (trial counts, elapsed time, front
size, the best accuracy reached at each speedup level), plain log lines and a heartbeat otherwise.

Example:
    >>> best_at_levels([(0.9, 1.1), (0.85, 1.6), (0.8, 2.2)], levels=(1.0, 1.5, 2.0, 3.0))
    {1.0: 0.9, 1.5: 0.85, 2.0: 0.8, 3.0: None}
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

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


def front_ends(study: Any) -> tuple[tuple[int, float, float], tuple[int, float, float]] | None:
    """The two ends of the Pareto front as (trial number, accuracy, speedup): the most accurate and
    the fastest front trial; None while no trial is complete."""
    front = [t for t in study.best_trials if t.values]
    if not front:
        return None
    acc = max(front, key=lambda t: (t.values[0], t.values[1]))
    fast = max(front, key=lambda t: (t.values[1], t.values[0]))
    return (acc.number, acc.values[0], acc.values[1]), (fast.number, fast.values[0], fast.values[1])


def rung_line(levels: list[Any]) -> str:
    """Finished trials per rung of a multi-fidelity search (studies rung 0 first), e.g.
    ``rung 0: 12 finished, rung 1: 4 finished, top rung 2: 1 finished``."""
    parts = []
    for k, st in enumerate(levels):
        s = summarize(st)
        name = f"top rung {k}" if k == len(levels) - 1 else f"rung {k}"
        parts.append(f"{name}: {s['complete'] + s['pruned'] + s['failed']} finished")
    return ", ".join(parts)


class Progress:
    """Progress of a running search, on ``stream`` (default: stderr).

    * ``stream`` is a terminal: a rich ``Live`` line (counts, elapsed time, front size, best accuracy
      at each speedup level), redrawn every ``refresh_s`` seconds.
    * Not a terminal (redirected to a file, a cluster job log): plain timestamped lines, flushed at
      once: one when the search starts, one per finished trial (:meth:`finished`), a heartbeat every
      ``heartbeat_s`` seconds (trials finished, running, the two ends of the front), one at the end.
    * ``enabled=False``: nothing.

    ``levels``: the studies of a multi-fidelity search, rung 0 first and ``study`` (the top rung) last;
    the counts are then rung 0's (what ``target`` counts), with a line of counts per rung, and the
    front is the top rung's.
    """

    def __init__(self, study: Any, target: int, enabled: bool = True, refresh_s: float = 2.0,
                 heartbeat_s: float = 60.0, stream: TextIO | None = None, levels: list[Any] | None = None) -> None:
        self.study, self.target, self.refresh_s, self.heartbeat_s = study, target, refresh_s, heartbeat_s
        self.levels = levels
        self.count_study = levels[0] if levels else study
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.mode = "off" if not enabled else ("live" if callable(isatty) and isatty() else "plain")
        self.t0 = time.time()
        self._last = 0.0
        self._live: Any = None

    def _elapsed(self) -> str:
        el = time.time() - self.t0
        return f"{int(el // 60)}m{int(el % 60):02d}s"

    def _render(self, running: int) -> Any:
        from rich.text import Text

        s = summarize(self.count_study, running)
        top = summarize(self.study) if self.levels else s
        done = s["complete"] + s["pruned"] + s["failed"]
        best = "  ".join(f">={lv:g}x: {'-' if v is None else f'{v:.4f}'}" for lv, v in top["best"].items())
        rungs = f"\n  {rung_line(self.levels)}" if self.levels else ""
        return Text(
            f"search '{self.study.study_name}'  {self._elapsed()}  "
            f"finished {done}/{self.target}{' at rung 0' if self.levels else ''} (complete {s['complete']}, "
            f"pruned {s['pruned']}, failed {s['failed']}"
            + (f", {s['skipped']} skipped/re-run" if s["skipped"] else "") + ")  "
            f"running {running}  front {top['front']}{rungs}\n  best accuracy at speedup {best}")

    def heartbeat_line(self, running: int) -> str:
        """One line: trials finished and running, front size and its two ends."""
        s = summarize(self.count_study, running)
        top = summarize(self.study) if self.levels else s
        done = s["complete"] + s["pruned"] + s["failed"]
        ends = front_ends(self.study) if top["complete"] else None
        if ends is None:
            front = "front: no complete trial yet" if not self.levels else "front: no complete top-rung trial yet"
        else:
            (na, aa, sa), (nf, af, sf) = ends
            front = (f"front {top['front']}: most accurate trial {na} ({aa:.4f}, {sa:.2f}x), "
                     f"fastest trial {nf} ({sf:.2f}x, {af:.4f})")
        rungs = f" [{rung_line(self.levels)}]" if self.levels else ""
        return (f"search '{self.study.study_name}' {self._elapsed()}: {done}/{self.target} finished"
                f"{' at rung 0' if self.levels else ''} (complete {s['complete']}, pruned {s['pruned']}, failed "
                f"{s['failed']}), running {running}{rungs}; {front}")

    def _write(self, line: str) -> None:
        self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        self.stream.flush()

    def update(self, running: int = 0, force: bool = False) -> None:
        """Redraw the live line, or (plain) write a heartbeat when ``heartbeat_s`` has passed."""
        now = time.time()
        if self.mode == "live" and self._live is not None:
            if force or now - self._last >= self.refresh_s:
                self._last = now
                self._live.update(self._render(running))
        elif self.mode == "plain" and (force or now - self._last >= self.heartbeat_s):
            self._last = now
            self._write(self.heartbeat_line(running))

    def finished(self, line: str, done: int, running: int = 0) -> None:
        """A trial finished: ``line`` describes it (plain mode writes it with the count so far)."""
        if self.mode == "plain":
            self._write(f"[{done}/{self.target}] {line}")
        self.update(running)

    def __enter__(self) -> "Progress":
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(0), console=Console(file=self.stream), refresh_per_second=1,
                              transient=False)
            self._live.__enter__()
        elif self.mode == "plain":
            self._write(f"search '{self.study.study_name}' started: target {self.target} trials; a line per "
                        f"finished trial and a heartbeat every {self.heartbeat_s:g} s")
            self._last = time.time()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            try:
                self._live.update(self._render(0))
            finally:
                self._live.__exit__(*exc)
        elif self.mode == "plain":
            self._write(self.heartbeat_line(0) + ("" if exc[0] is None else " (stopped)"))
