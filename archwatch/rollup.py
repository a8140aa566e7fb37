"""``kpi_item``: the KPI numbers per item, kept equal to the sum of ``kpi_task``'s shards
(and the invariant of ``anomaly_count``, the anomaly counts the shards write themselves).

``kpi_task`` holds absolute partial totals, one row per (item, dataflow shard), which
is what makes the sink idempotent (see :mod:`archwatch.kpi`). Every statistics read then
has to collapse 32 rows per item with ``FINAL`` and sum them. ``kpi_item`` is that sum,
written by whoever writes ``kpi_task``: after its writes, the items they touched are
recomputed from ``kpi_task FINAL`` by one ``INSERT ... SELECT`` (:func:`refresh_range`).
The store sink does it after every write by default, a replay once at its end, a live
run at most once a second (``connectors/store_sink.py``), so ``kpi_item`` may trail
``kpi_task`` by that much; :func:`rebuild` recomputes everything.

Why recomputing is exact under concurrent writers (several workers' sinks, or processes
of a cluster, write partials of the same item at once): each recompute is versioned with
its statement's start time, taken by ClickHouse before it reads. Take the recompute R
with the highest version. Every write W of a partial finished before the recompute that
covers W started, so before R started (R's version is the highest), so before R read: R
saw every partial written so far, and ReplacingMergeTree keeps R. (A partial replaced
before its recompute ran is covered by the recompute of the row that replaced it.) An item whose partials
are all withdrawn gets a tombstone (``is_deleted``) from the same statement, so a
recompute never leaves a stale row behind. Re-running a recompute (at-least-once
output) only writes the same sums again, newer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from archwatch.store import Store

# An item's identity: kpi_task's key without the shard, kpi_item's ORDER BY.
ITEM_KEY: tuple[str, ...] = ("year", "qym", "dept_code", "system_code", "task_id",
                             "system_level")
_NAMES = ("area", "dept_name", "system_name", "task_code", "task_name")
_SUMS = ("kpi", "archived", "archived_succ", "archived_fail", "cycle_ms_sum")
_KEY = ", ".join(ITEM_KEY)

# The items touched are named by the versions of the kpi_task rows just written (a
# range), not by a list of keys: as literals, ClickHouse spends ~60 µs parsing each key
# (a replay's flush touches thousands); as a parameter, a server takes them in the URL,
# whose length HTTP parsers limit. Rows of other writers in the same range only add items
# to recompute, which is harmless.
_TOUCHED = (f"SELECT DISTINCT {_KEY} FROM kpi_task"
            " WHERE version BETWEEN {lo:UInt64} AND {hi:UInt64}")

_REFRESH = f"""
INSERT INTO kpi_item ({', '.join(ITEM_KEY + _NAMES + _SUMS)},
                      last_receive, last_update, version, is_deleted)
WITH toUInt64(toUnixTimestamp64Nano(now64(9))) AS started
SELECT {', '.join('d.' + c for c in ITEM_KEY)}, {', '.join('s.' + c for c in _NAMES + _SUMS)},
       s.last_receive, s.last_update, started, s.kpi = 0
FROM ({_TOUCHED}) AS d
LEFT JOIN (
    SELECT {_KEY},
           {', '.join(f'any({c}) AS {c}' for c in _NAMES)},
           {', '.join(f'sum({c}) AS {c}' for c in _SUMS)},
           max(last_receive) AS last_receive, max(last_update) AS last_update
    FROM kpi_task FINAL
    WHERE ({_KEY}) IN ({_TOUCHED})
    GROUP BY {_KEY}
) AS s USING ({_KEY})
SETTINGS join_use_nulls = 0
"""


def version_range(written: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """The versions of these ``kpi_task`` rows (written, or tombstones), as a range."""
    versions = [r["version"] for r in written]
    return min(versions), max(versions)


def refresh_range(store: Store, lo: int, hi: int) -> None:
    """Recompute ``kpi_item`` for the items of the ``kpi_task`` rows versioned ``lo..hi``,
    from everything ``kpi_task`` holds now."""
    store.command(_REFRESH, {"lo": lo, "hi": hi})


def refresh(store: Store, written: Iterable[Mapping[str, Any]]) -> None:
    """Recompute ``kpi_item`` for the items of these ``kpi_task`` rows."""
    rows = list(written)
    if rows:
        refresh_range(store, *version_range(rows))


_ORPHANS = f"""
INSERT INTO kpi_item ({_KEY}, version, is_deleted)
SELECT {_KEY}, toUInt64(toUnixTimestamp64Nano(now64(9))), 1 FROM kpi_item FINAL
WHERE ({_KEY}) NOT IN (SELECT {_KEY} FROM kpi_task)
"""


def rebuild(store: Store) -> None:
    """Every item recomputed, and items without any partial withdrawn: a live run starts
    with this, since a refresh still pending when a process died is not in any snapshot."""
    refresh_range(store, 0, 2**64 - 1)
    store.command(_ORPHANS)


REBUILD = f"""
INSERT INTO kpi_item ({', '.join(ITEM_KEY + _NAMES + _SUMS)},
                      last_receive, last_update, version, is_deleted)
SELECT {', '.join(ITEM_KEY)}, {', '.join(f'any({c})' for c in _NAMES)},
       {', '.join(f'sum({c})' for c in _SUMS)}, max(last_receive), max(last_update),
       toUInt64(toUnixTimestamp64Nano(now64(9))), 0
FROM kpi_task FINAL
GROUP BY {', '.join(ITEM_KEY)}
HAVING sum(kpi) != 0
"""
"""All of ``kpi_item`` from ``kpi_task``, for a table filled without the sink (a store
generated with SQL, as ``bench/queries.py`` does). Assumes an empty ``kpi_item``."""

_COMPARED = ", ".join(ITEM_KEY + _SUMS + ("last_receive",))
DIFFERENCES = f"""
SELECT 'kpi_item only' AS side, * FROM (
    SELECT {_COMPARED} FROM kpi_item FINAL
    EXCEPT
    SELECT {', '.join(ITEM_KEY)}, {', '.join(f'sum({c})' for c in _SUMS)}, max(last_receive)
    FROM kpi_task FINAL GROUP BY {', '.join(ITEM_KEY)})
UNION ALL
SELECT 'kpi_task only' AS side, * FROM (
    SELECT {', '.join(ITEM_KEY)}, {', '.join(f'sum({c})' for c in _SUMS)}, max(last_receive)
    FROM kpi_task FINAL GROUP BY {', '.join(ITEM_KEY)}
    EXCEPT
    SELECT {_COMPARED} FROM kpi_item FINAL)
ORDER BY {', '.join(ITEM_KEY)}, side
LIMIT 100
"""


def differences(store: Store) -> list[dict[str, Any]]:
    """Items where ``kpi_item`` is not the sum of ``kpi_task`` (empty when consistent):
    the invariant the tests check after every run, and a check an operator can run."""
    return store.query(DIFFERENCES)


# ---------------------------------------------------------------------------
# anomaly_count (0014): written by the dataflow's shards themselves (engine.AnomalyCounts),
# each its partial; what it must equal is each shard's anomaly rows, counted.

_COUNT_KEY = "code, qym, dept_code, system_code, src"
COUNTS = f"""
SELECT code, any(class) AS class, qym, dept_code, system_code, src, toInt64(count()) AS total,
       toInt64(countIf(resolved_at IS NULL)) AS open
FROM anomaly FINAL GROUP BY {_COUNT_KEY}
"""
"""Every shard's ``anomaly_count`` partials as counted from ``anomaly`` (the rows carry
their shard's src): for a store filled without the dataflow (``bench/queries.py``), as
migration 0014 backfills, and for :func:`count_differences`."""

COUNT_DIFFERENCES = f"""
SELECT 'anomaly_count only' AS side, * FROM (
    SELECT {_COUNT_KEY}, total, open FROM anomaly_count FINAL
    EXCEPT SELECT {_COUNT_KEY}, total, open FROM ({COUNTS}))
UNION ALL
SELECT 'anomaly only' AS side, * FROM (
    SELECT {_COUNT_KEY}, total, open FROM ({COUNTS})
    EXCEPT SELECT {_COUNT_KEY}, total, open FROM anomaly_count FINAL)
ORDER BY {_COUNT_KEY}, side
LIMIT 100
"""


def count_differences(store: Store) -> list[dict[str, Any]]:
    """Groups where a shard's ``anomaly_count`` row is not the count of its ``anomaly``
    rows (empty when consistent): checked by the tests after every run, like
    :func:`differences`."""
    return store.query(COUNT_DIFFERENCES)
