"""``kpi_item`` held in memory, to answer the KPI reads without a query.

Every statistics read (the seed endpoints, ``/stats``, the drill-down levels above the
case) is a filter, group, sort and page over ``kpi_item``, which holds one row per item
and year: 23,505 rows for 100 million cases, growing with the catalogue and the years,
never with the cases. Through chDB each such read costs 8–14 ms, nearly all of it the
query's fixed cost; under 16 clients on 2 cores they queue to many times that. Held as
Python tuples, the same answer takes tens of microseconds for a department, a few
milliseconds for a year's systems.

A cube is the contents of ``kpi_item FINAL`` at one generation of the table, so it is an
entry of the app's :class:`~archwatch.store.ReadCache` like any read, and as correct:
filed under the generation read before it was loaded, dropped at the next write to
``kpi_item``. Where that cache cannot keep anything (a ClickHouse server that other
processes write, or the cache turned off), or the table is larger than
:data:`MAX_ROWS` (``ARCHWATCH_KPI_CUBE_ROWS``), or while a new generation's cube is
loading (loads run in the background, spaced: see :func:`cube_of`),
:func:`archwatch.api.queries.kpi_groups` runs its SQL instead; the two give the same
answers (``tests/test_kpi_cube.py`` compares them on random tables and queries).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from operator import is_not, itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from archwatch.store import ReadCache, Store

if TYPE_CHECKING:
    from archwatch.api.queries import KpiQuery

MAX_ROWS = 500_000
"""Above this many rows (≈ 200 MB of tuples) the reads go to the store; the API's
setting ``kpi_cube_rows`` sets it per app (0: never held)."""
RELOAD_GAP = 10
"""A load starts at least this many times its own last duration after the last one..."""
MIN_RELOAD_S = 1.0
"""... and at least this many seconds after it."""
MAX_ANSWERS = 4096
"""Answers a cube keeps (a dashboard asks the same pages again and again)."""

# A row: the six dimension columns first (index = _DIM_INDEX), then the names, the sums,
# last_receive (epoch ms or None) and last_update (epoch s).
_COLUMNS = ("year", "qym", "dept_code", "system_code", "task_id", "system_level",
            "area", "dept_name", "system_name", "task_name",
            "kpi", "archived", "archived_succ", "archived_fail", "cycle_ms_sum")
_SELECT = (", ".join(_COLUMNS) + ", toUnixTimestamp64Milli(last_receive) AS last_receive,"
           " toUnixTimestamp(last_update) AS last_update")
# ORDER BY the table's key: ``any()`` of a name is then the first row's, as ClickHouse
# reads one merged part.
_LOAD = (f"SELECT {_SELECT} FROM kpi_item FINAL"
         " ORDER BY year, qym, dept_code, system_code, task_id, system_level"
         " FORMAT JSONCompactColumns")
_DIM_INDEX = {"year": 0, "qym": 1, "deptCode": 2, "systemCode": 3, "taskId": 4,
              "systemLevel": 5}
# The display name of a grouped dimension (queries.DIMENSIONS' any(...) column).
_NAME_INDEX = {"qym": 6, "deptCode": 7, "systemCode": 8, "taskId": 9}
(_G_KPI, _G_ARCHIVED, _G_SUCC, _G_FAIL, _G_CYCLE, _G_RECEIVE, _G_UPDATE) = (
    itemgetter(i) for i in range(10, 17))
_IS_SET = partial(is_not, None)


def _NO_KEY(_row: tuple[Any, ...]) -> tuple[()]:
    return ()


def _sort_value(sort: str) -> Any:
    """The sort expression of queries.SORTS over a group's sums (same Float64 maths)."""
    if sort == "archiveRate":
        return lambda s: s[1] / s[0] if s[0] != 0 else 0
    if sort == "errorRate":
        return lambda s: s[3] / s[1] if s[1] != 0 else 0
    if sort == "timeDiff":
        return lambda s: s[4] / s[1] if s[1] != 0 else 0
    if sort == "unArchived":
        return lambda s: s[0] - s[1]
    field = {"kpi": 0, "archived": 1, "archivedFail": 3}[sort]
    return lambda s: s[field]


@dataclass(frozen=True)
class KpiCube:
    """The rows of ``kpi_item FINAL`` and, per dimension value, the rows that have it."""

    rows: list[tuple[Any, ...]]
    # (dimension, value) -> the rows that have it; one dimension's entries are made the
    # first time a query filters on it (a year's, a region's... reads need one or two)
    index: dict[tuple[int, Any], list[int]] = field(default_factory=dict)
    indexed: set[int] = field(default_factory=set)
    # answers given so far (the cube never changes, so they stay true), a bounded number
    answers: dict[Any, tuple[list[dict[str, Any]], int]] = field(default_factory=dict)

    def rows_with(self, d: int, value: Any) -> list[int]:
        """The rows whose dimension ``d`` equals ``value``."""
        if d not in self.indexed:
            with _INDEXING:
                if d not in self.indexed:
                    part: dict[Any, list[int]] = {}
                    for i, v in enumerate(map(itemgetter(d), self.rows)):
                        hit = part.get(v)
                        if hit is None:
                            part[v] = [i]
                        else:
                            hit.append(i)
                    self.index.update(((d, v), ids) for v, ids in part.items())
                    self.indexed.add(d)
        return self.index.get((d, value), [])

    @classmethod
    def load(cls, store: Store, max_rows: int | None = None) -> KpiCube | None:
        """The table as it is now, or None when it has more than ``max_rows`` rows
        (default :data:`MAX_ROWS`)."""
        limit = MAX_ROWS if max_rows is None else max_rows
        n = store.query("SELECT count() AS n FROM kpi_item")[0]["n"]
        if n > limit:  # rows before FINAL: an upper bound of what would be held
            return None
        cols = orjson.loads(store.query_text(_LOAD, "JSONCompactColumns"))
        if not cols:
            return cls([])
        # strings repeated on many rows (regions, systems, names) kept once
        intern: dict[Any, Any] = {}
        for c in range(1, 10):
            cols[c] = [intern.setdefault(v, v) for v in cols[c]]
        return cls(list(zip(*cols, strict=True)))

    def item_prefixes(self, task_id: str, year: int | None) -> dict[str, list[Any]]:
        """The (year, qym, dept_code) prefixes under which ``case_state`` holds the item's
        cases, as :func:`archwatch.lookups.item_prefix_sets` gives them: every case with a
        row counts in its item's KPI group (the row and the KPI part come from the same
        completion), so a current case's prefix is a kpi_item row's, as soon as kpi_item
        has been refreshed after it (live: within a second)."""
        rows = [self.rows[i] for i in self.rows_with(_DIM_INDEX["taskId"], task_id)]
        if year is not None:
            rows = [r for r in rows if r[0] == year]
        return {"k_year": sorted({r[0] for r in rows}), "k_qym": sorted({r[1] for r in rows}),
                "k_dept": sorted({r[2] for r in rows})}

    def count(self, filters: dict[str, Any]) -> int:
        """The cases counted in the KPI groups matching ``filters`` (sum of ``kpi``)."""
        from archwatch.api.queries import KpiQuery

        rows, _ = self.groups(KpiQuery([], filters, "key", False, 1, 0))
        return int(rows[0]["kpi"]) if rows else 0

    def groups(self, q: KpiQuery) -> tuple[list[dict[str, Any]], int]:
        """The rows and total that ``kpi_groups``' SQL returns for ``q``, in its shape
        (shared between callers: not to be changed)."""
        key = (tuple(q.group_by), tuple(sorted(q.filters.items())), q.sort, q.desc, q.limit,
               q.offset)
        hit = self.answers.get(key)
        if hit is None:
            hit = self._groups(q)
            if len(self.answers) >= MAX_ANSWERS:
                self.answers.clear()
            self.answers[key] = hit
        return hit

    def _groups(self, q: KpiQuery) -> tuple[list[dict[str, Any]], int]:
        conds = [(_DIM_INDEX[d], int(v) if d == "year" else str(v))
                 for d, v in q.filters.items() if v is not None]
        rows = self.rows
        if conds:
            lists = [self.rows_with(d, v) for d, v in conds]
            first = min(range(len(lists)), key=lambda k: len(lists[k]))
            rest = [c for k, c in enumerate(conds) if k != first]
            picked: Iterable[tuple[Any, ...]] = map(rows.__getitem__, lists[first])
            for d, v in rest:  # one pass a condition: no per-row generator
                picked = [r for r in picked if r[d] == v]
        else:
            picked = rows
        dims = [_DIM_INDEX[d] for d in q.group_by]
        names = [_NAME_INDEX[d] for d in q.group_by if d in _NAME_INDEX]
        last = _NAME_INDEX.get(q.group_by[-1]) if q.group_by else None
        # rows by group, then each column summed in C (itemgetter, sum, max): ~0.5 µs a
        # row against ~2 for a Python loop adding up each row
        key_of = itemgetter(*dims) if dims else _NO_KEY
        buckets: dict[Any, list[tuple[Any, ...]]] = {}
        for r in picked:
            k = key_of(r)
            b = buckets.get(k)
            if b is None:
                buckets[k] = [r]
            else:
                b.append(r)
        # group key (a tuple) -> [kpi, archived, succ, fail, cycle, receive, update, first row]
        acc: dict[tuple[Any, ...], list[Any]] = {}
        for k, b in buckets.items():
            acc[k if len(dims) > 1 else (k,) if dims else ()] = [
                sum(map(_G_KPI, b)), sum(map(_G_ARCHIVED, b)), sum(map(_G_SUCC, b)),
                sum(map(_G_FAIL, b)), sum(map(_G_CYCLE, b)),
                max(filter(_IS_SET, map(_G_RECEIVE, b)), default=None),
                max(map(_G_UPDATE, b)), b[0]]
        kept = [(k, a) for k, a in acc.items() if a[0] != 0]  # HAVING kpi != 0
        # ORDER BY the sort expression in the asked direction, then the group columns
        # ascending; by the group columns alone (sort "key"), each in the asked direction.
        kept.sort(key=lambda ka: ka[0], reverse=q.desc and q.sort == "key")
        if q.sort != "key" or not dims:
            value = _sort_value(q.sort if q.sort != "key" else "kpi")
            kept.sort(key=lambda ka: value(ka[1]), reverse=q.desc)
        total = len(kept)
        out = []
        for key, a in kept[q.offset:q.offset + q.limit]:
            first = a[7]
            row: dict[str, Any] = {f"k_{i}": str(v) for i, v in enumerate(key)}
            for d, n in zip((d for d in q.group_by if d in _NAME_INDEX), names, strict=True):
                row[f"n_{d}"] = first[n]
            row.update(name=first[last] if last is not None else "", kpi=a[0], archived=a[1],
                       archived_succ=a[2], archived_fail=a[3], cycle_ms_sum=a[4],
                       last_receive=a[5], last_update=a[6])
            out.append(row)
        return out, total


@dataclass
class _Held:
    """The cube of one :class:`ReadCache`: the generation it was loaded at, and whether a
    load is under way."""

    max_rows: int | None = None
    generation: Any = None
    cube: KpiCube | None = None
    loader: Future[None] | None = None
    next_load: float = 0.0  # time.monotonic() before which no load starts (unless waited for)


_HELD: weakref.WeakKeyDictionary[ReadCache, _Held] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_INDEXING = threading.Lock()
# One thread loads every cube: the store keeps a connection per thread that reads it.
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kpi-cube")
log = logging.getLogger(__name__)


def hold(reads: ReadCache, max_rows: int) -> None:
    """Hold at most ``max_rows`` rows of ``kpi_item`` for ``reads`` (0: none)."""
    with _LOCK:
        _HELD[reads] = _Held(max_rows=max_rows)


def cube_of(reads: Any, wait: bool = False) -> KpiCube | None:
    """The cube of the current generation of ``kpi_item`` behind ``reads``, or None: when
    the reads cannot be cached (a server others write, the cache off), when the table is
    too large, or while the current generation's cube is loading (a read then goes to
    the store: a load costs 0.1–0.3 s at 23,505 rows, ten reads' worth, so no read waits
    for one unless ``wait``). A load starts when a read finds the cube out of date, no
    sooner than :data:`MIN_RELOAD_S` and :data:`RELOAD_GAP` times the last load's
    duration after the last one (``wait`` starts one at once)."""
    if not isinstance(reads, ReadCache) or reads.size <= 0:
        return None
    store = reads.store
    gen = store.generation(("kpi_item",))
    if gen is None:
        return None
    with _LOCK:
        held = _HELD.get(reads)
        if held is None:
            held = _HELD[reads] = _Held()
        if held.generation == gen or held.max_rows == 0:
            return held.cube
        loader = held.loader
        if loader is None and (wait or time.monotonic() >= held.next_load):
            loader = held.loader = _LOADER.submit(_load, store, held)
    if wait and loader is not None:
        loader.result()
        return cube_of(reads)
    return None


def _load(store: Store, held: _Held) -> None:
    # Filed under the generation read before loading, as ReadCache files its entries: a
    # cube may hold a write newer than its generation, never miss an older one.
    started = time.monotonic()
    try:
        gen = store.generation(("kpi_item",))
        cube = KpiCube.load(store, held.max_rows)
    except Exception:  # noqa: BLE001 - the reads go to the store meanwhile
        log.warning("loading kpi_item into memory failed; reading the store", exc_info=True)
        cube, gen = None, None
    # Live, kpi_item changes up to once a second, and a load holds the GIL for much of its
    # 0.15-0.25 s, beside the dataflow in `archwatch up`: loads are spaced so that they
    # take at most 1/RELOAD_GAP of the time; reads go to the store in between.
    pause = max(MIN_RELOAD_S, RELOAD_GAP * (time.monotonic() - started))
    with _LOCK:
        if gen is not None:
            held.generation, held.cube = gen, cube
        held.loader, held.next_load = None, started + pause
