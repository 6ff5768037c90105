"""One root cause per alert: which of several nested alarmed slices to report.

When a strain drifts, the whole cellar, the strain's brands, the season it is brewed in and
every pair holding the strain alarm with it. Between two alarmed slices, one inside the
other (a *parent* and a *child*):

* the parent is **explained** by the child when, without the child's rows, the parent no
  longer alarms (the cellar without its lagers is fine: the lagers are the cause);
* otherwise the child is a **piece** of the parent's cause (lagers in FV03 alarm because
  lagers do);
* two slices with the very same rows are one: the coarser stays.

Following those links from any alarmed slice ends at its root; each root is reported once,
listing the slices it explains. The windowed and the sequential tests use the same rule,
each with its own test of "still alarms without the child".
"""

from __future__ import annotations

from collections.abc import Callable


def resolve(
    count: int,
    inside: Callable[[int, int], bool],
    same_rows: Callable[[int, int], bool],
    alarms_without: Callable[[int, int], bool],
    size: Callable[[int], int],
    overlaps: Callable[[int, int], bool] | None = None,
) -> list[int]:
    """The root of each of ``count`` alarmed slices. ``inside(p, c)``: slice ``c`` lies in
    slice ``p``; ``same_rows(p, c)``: they hold the same rows; ``alarms_without(p, c)``:
    ``p`` still alarms without ``c``'s rows; ``size(i)``: rows of slice ``i`` (the smallest
    explaining child is preferred); ``overlaps(p, c)``: they share rows without nesting (a
    fermenter and a strain brewed in it), where only "explained" applies: a fermenter that
    is fine without its lagers alarms because of the lagers. Slices are listed coarsest
    first."""
    explained: dict[int, int] = {}
    alias: dict[int, int] = {}
    piece: dict[int, int] = {}
    for p in range(count):
        for c in sorted((c for c in range(count) if c != p and inside(p, c)), key=size):
            if same_rows(p, c):
                if p < c:
                    alias.setdefault(c, p)
            elif not alarms_without(p, c):
                explained.setdefault(p, c)
            else:
                piece.setdefault(c, p)
    for p in range(count):  # a strain explains a fermenter it shares batches with, not nests in
        if p in explained or overlaps is None:
            continue
        for c in sorted((c for c in range(count) if c != p and overlaps(p, c)), key=size):
            if not alarms_without(p, c) and alarms_without(c, p):
                explained[p] = c
                break
    parent_of = {**piece, **alias, **explained}
    roots = []
    for i in range(count):
        root, seen = i, {i}
        while root in parent_of and parent_of[root] not in seen:
            root = parent_of[root]
            seen.add(root)
        roots.append(root)
    return roots
