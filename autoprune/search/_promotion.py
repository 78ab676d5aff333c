"""The promotion rule of a multi-fidelity search, as pure functions of the results finished at one rung.

A rung's results are points of two (or more) objectives, all maximised (validation accuracy, measured
speedup). Among the policies *finished* at a rung (complete, stopped early or failed: every one that
will not come back), the top ``promote_fraction`` are the ones worth a larger budget:

1. the complete ones are ordered by **non-dominated rank** (rank 0: the rung's Pareto front; rank 1:
   the front of what is left; ...), as NSGA-II and MO-ASHA do;
2. within a rank, by **crowding distance**, larger first: the ends of a front and the points in its
   sparse stretches spread the next rung's budget along the whole trade-off, instead of piling it on
   one crowded corner;
3. remaining ties by trial number, earlier first (the order is deterministic).

With a ``floor`` on the first objective (accuracy), the policies below it rank after every policy at or
above it, most accurate first, whatever their other objectives (feasibility first, as constrained
NSGA-II ranks: Deb's constrained domination), and while the rung can still grow they are not promoted
at all; once it is closed they may fill what is left of the quota. A multi-fidelity search sets the
floor a slack below its accuracy floor (``promote_floor_slack``), so a very fast policy whose accuracy
retraining is unlikely to bring back to the floor does not take the full budget from one that may.

The quota is ``floor(n * fraction)`` of the ``n`` finished policies while the rung can still grow
(asynchronous successive halving: a policy is promoted as soon as it is in the top of what finished
so far, and no worker waits for a rung to fill). Once nothing more can arrive at the rung (the
search reached its target and nothing runs there), the quota becomes ``ceil(n * fraction)``, so the
last, partly filled "bracket" still sends its best policy up. Stopped and failed policies count in
``n`` and are never promoted. A policy already promoted (its key is at the next rung) is not
promoted again; the rule never demotes.

Example (three fronts: (0.9, 1.2) and (0.8, 2.0) are non-dominated, (0.85, 1.1) is behind the first):
    >>> pts = [(0.9, 1.2), (0.8, 2.0), (0.85, 1.1), (0.7, 1.5), (0.6, 1.0), (0.5, 0.9)]
    >>> non_dominated_ranks(pts)
    [0, 0, 1, 1, 2, 3]
    >>> order(pts)[:3]
    [0, 1, 2]
    >>> quota(6, 1 / 3, closed=False), quota(7, 1 / 3, closed=False), quota(7, 1 / 3, closed=True)
    (2, 2, 3)
    >>> cands = [Candidate(number=i, key=f"p{i}", values=p) for i, p in enumerate(pts)]
    >>> [c.number for c in select(cands, 1 / 3, promoted={"p0"}, closed=False)]
    [1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

Point = Sequence[float]

#: tolerance of the quota's floor/ceil (n * 1/3 must give 1 at n = 3, not 0.9999...)
_EPS = 1e-9


@dataclass(frozen=True)
class Candidate:
    """One policy finished at a rung: its trial ``number`` there, its policy ``key`` (what makes two
    policies the same) and its objective ``values`` (None: stopped early or failed)."""

    number: int
    key: str
    values: tuple[float, ...] | None


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one (all maximised).

    Example:
        >>> dominates((0.9, 2.0), (0.9, 1.5)), dominates((0.9, 1.5), (0.9, 1.5)), dominates((0.8, 3), (0.9, 1))
        (True, False, False)
    """
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated_ranks(points: Sequence[Point]) -> list[int]:
    """The non-dominated rank of each point: 0 for the Pareto front, 1 for the front of the rest, ...

    Equal points share a rank. Quadratic in the number of points (a rung holds hundreds at most).
    """
    n = len(points)
    dominated_by = [0] * n                 # how many points dominate i
    dominates_of: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominates_of[i].append(j)
                dominated_by[j] += 1
            elif dominates(points[j], points[i]):
                dominates_of[j].append(i)
                dominated_by[i] += 1
    ranks = [-1] * n
    current = [i for i in range(n) if dominated_by[i] == 0]
    rank = 0
    while current:
        nxt = []
        for i in current:
            ranks[i] = rank
            for j in dominates_of[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current, rank = nxt, rank + 1
    return ranks


def crowding_distances(points: Sequence[Point], members: Iterable[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each point index in ``members`` (one front): per objective, the
    gap between its two neighbours along that objective divided by the front's range, summed; the two
    ends of each objective get infinity.

    Example:
        >>> d = crowding_distances([(0.9, 1.0), (0.85, 1.5), (0.8, 2.0), (0.7, 2.1)], range(4))
        >>> d[0], d[3], round(d[1], 3), round(d[2], 3)
        (inf, inf, 1.409, 1.295)
    """
    idx = list(members)
    out = {i: 0.0 for i in idx}
    if len(idx) <= 2:
        return {i: math.inf for i in idx}
    for m in range(len(points[idx[0]])):
        by = sorted(idx, key=lambda i: (points[i][m], i))
        lo, hi = points[by[0]][m], points[by[-1]][m]
        out[by[0]] = out[by[-1]] = math.inf
        if hi - lo <= 0:
            continue
        for k in range(1, len(by) - 1):
            out[by[k]] += (points[by[k + 1]][m] - points[by[k - 1]][m]) / (hi - lo)
    return out


def order(points: Sequence[Point], floor: float | None = None) -> list[int]:
    """Point indices best first: by non-dominated rank, then crowding distance (larger first) within
    a rank, then index. With ``floor``, the points whose first value is below it come last, by that
    value (larger first).

    Example (the fastest point is far below the floor 0.8):
        >>> order([(0.9, 1.2), (0.5, 3.0), (0.85, 1.1)]), order([(0.9, 1.2), (0.5, 3.0), (0.85, 1.1)], floor=0.8)
        ([0, 1, 2], [0, 2, 1])
    """
    if floor is not None:
        ok = [i for i, p in enumerate(points) if p[0] >= floor]
        short = sorted((i for i, p in enumerate(points) if p[0] < floor), key=lambda i: (-points[i][0], i))
        return [ok[j] for j in order([points[i] for i in ok])] + short
    ranks = non_dominated_ranks(points)
    crowd: dict[int, float] = {}
    for r in set(ranks):
        crowd.update(crowding_distances(points, [i for i, x in enumerate(ranks) if x == r]))
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def quota(finished: int, fraction: float, *, closed: bool) -> int:
    """How many of ``finished`` policies the top ``fraction`` holds: ``floor`` while the rung can still
    grow, ``ceil`` once it is closed (nothing more will finish there)."""
    if finished <= 0:
        return 0
    x = finished * fraction
    return min(finished, math.ceil(x - _EPS) if closed else math.floor(x + _EPS))


def select(candidates: Sequence[Candidate], fraction: float, promoted: set[str] | frozenset[str] = frozenset(),
           *, closed: bool, floor: float | None = None) -> list[Candidate]:
    """The candidates to promote now: those in the top ``quota`` of the rung whose key is not in
    ``promoted`` (already at the next rung), best first (:func:`order`, with ``floor``); one per key.

    ``candidates`` are all policies finished at the rung; those without values rank below every
    complete one and are never selected, nor, while the rung is open, those below ``floor``.
    """
    complete = [c for c in candidates if c.values is not None]
    k = quota(len(candidates), fraction, closed=closed)
    best = [complete[i] for i in order([c.values for c in complete], floor)[:k]]  # type: ignore[misc]
    if floor is not None and not closed:
        best = [c for c in best if c.values[0] >= floor]  # type: ignore[index]
    out, seen = [], set(promoted)
    for c in best:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


__all__ = ["Candidate", "crowding_distances", "dominates", "non_dominated_ranks", "order", "quota", "select"]
