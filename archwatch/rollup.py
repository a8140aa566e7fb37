"""``kpi_item``: the KPI numbers per item, kept equal to the sum of ``kpi_task``'s shards.

``kpi_task`` holds absolute partial totals, one row per (item, dataflow shard), which
is what makes the sink idempotent (see :mod:`archwatch.kpi`). Every statistics read then
has to collapse 32 rows per item with ``FINAL`` and sum them. ``kpi_item`` is that sum,
written by whoever writes ``kpi_task``: after each write, the items it touched are
recomputed from ``kpi_task FINAL`` by one ``INSERT ... SELECT`` (:func:`refresh`).

Why recomputing is exact under concurrent writers (several workers' sinks, or processes
of a cluster, write partials of the same item at once): each recompute is versioned with
its statement's start time, taken by ClickHouse before it reads. Take the recompute R
with the highest version. Every write W of a partial finished before W's own recompute
started, so before R started (R's version is the highest), so before R read: R saw
every partial written so far, and ReplacingMergeTree keeps R. An item whose partials
are all withdrawn gets a tombstone (``is_deleted``) from the same statement, so a
recompute never leaves a stale row behind. Re-running a recompute (at-least-once
output) only writes the same sums again, newer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from archwatch.store import Store, sql_literal

# An item's identity: kpi_task's key without the shard, kpi_item's ORDER BY.
ITEM_KEY: tuple[str, ...] = ("year", "qym", "dept_code", "system_code", "task_id",
                             "system_level")
# Items per statement. The keys are written into the statement as literals (twice), not
# passed as a parameter: a server takes parameters in the URL, whose length proxies and
# HTTP parsers limit; a statement must stay under ClickHouse's max_query_size (256 KiB),
# and an item's key is ~100 bytes.
CHUNK = 500

_NAMES = ("area", "dept_name", "system_name", "task_code", "task_name")
_SUMS = ("kpi", "archived", "archived_succ", "archived_fail", "cycle_ms_sum")

_REFRESH = f"""
INSERT INTO kpi_item ({', '.join(ITEM_KEY + _NAMES + _SUMS)},
                      last_receive, last_update, version, is_deleted)
WITH toUInt64(toUnixTimestamp64Nano(now64(9))) AS started
SELECT k.1, k.2, k.3, k.4, k.5, k.6, {', '.join('s.' + c for c in _NAMES + _SUMS)},
       s.last_receive, s.last_update, started, s.kpi = 0
FROM (SELECT arrayJoin([{{keys}}]) AS k) AS d
LEFT JOIN (
    SELECT ({', '.join(ITEM_KEY)}) AS k,
           {', '.join(f'any({c}) AS {c}' for c in _NAMES)},
           {', '.join(f'sum({c}) AS {c}' for c in _SUMS)},
           max(last_receive) AS last_receive, max(last_update) AS last_update
    FROM kpi_task FINAL
    WHERE ({', '.join(ITEM_KEY)}) IN ({{keys}})
    GROUP BY {', '.join(ITEM_KEY)}
) AS s USING (k)
SETTINGS join_use_nulls = 0
"""


def item_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The item a ``kpi_task`` row (or tombstone) belongs to."""
    return tuple(row[c] for c in ITEM_KEY)


def refresh(store: Store, keys: Iterable[tuple[Any, ...]]) -> int:
    """Recompute ``kpi_item`` for these items from ``kpi_task``; how many were given."""
    todo = sorted(set(keys))
    for i in range(0, len(todo), CHUNK):
        literal = ",".join(sql_literal(tuple(k)) for k in todo[i:i + CHUNK])
        store.command(_REFRESH.replace("{keys}", literal))
    return len(todo)


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
