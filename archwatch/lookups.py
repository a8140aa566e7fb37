"""Primary-key reads of ``case_state`` and ``anomaly`` rows found by a column that is not
their sorting key's prefix (issue #10, query latency). Here, not under ``api/``: the
distribution queue asks the same questions.

``FINAL`` (the current row of each key) cannot use a projection, and a filter on a column
past the key's prefix makes it read every part's rows. So a case's rows are read in two
steps:

1. the sorting keys, from ``case_key`` (0016), which holds every key the case's rows have
   had, or an item's key prefixes from its raw rows through the ``p_item_keys``
   projection (0012) — a superset of the current rows' keys, since the current row of a
   key is one of its raw rows;
2. ``FINAL`` over exactly those keys, with the caller's filter applied again: a
   primary-key read of a few granules.

An anomaly's rows need one step (:func:`anomaly_current`): the raw rows through a
projection (0012, 0013) already hold every version of each key found.

The key sets are passed as arrays per column (``year IN … AND qym IN …``): their cross
product is a superset of the keys found, which only widens step 2's primary-key ranges;
every row returned still passes the caller's filter, so the answer is the same.
"""

from __future__ import annotations

from typing import Any

from archwatch.store import Reader


def case_key_sets(store: Reader, where: str, params: dict[str, Any]) -> dict[str, list[Any]]:
    """Per key column, the keys ``case_state`` rows matching ``where`` (a filter on
    ``case_no`` alone) have had, as parameters ``k_year``, ``k_qym``, ``k_dept``,
    ``k_task``; empty lists if there is none. From ``case_key`` (migration 0016, ordered by
    case_no, filled from every insert into case_state): a superset of the current rows'
    keys, as step 1 needs. (0012's projection p_case_no answered it too, but ClickHouse
    also analysed case_state's own key for each such read, a generic exclusion search
    over every mark since case_no is its last column: 20-30 ms at 100M cases.)"""
    rows = store.query(f"SELECT year, qym, dept_code, task_id FROM case_key WHERE {where}",
                       params)
    return {"k_year": sorted({r["year"] for r in rows}), "k_qym": sorted({r["qym"] for r in rows}),
            "k_dept": sorted({r["dept_code"] for r in rows}),
            "k_task": sorted({r["task_id"] for r in rows})}


CASE_KEYS_IN = ("year IN {k_year:Array(UInt16)} AND qym IN {k_qym:Array(String)}"
                " AND dept_code IN {k_dept:Array(String)} AND task_id IN {k_task:Array(String)}")


def item_prefix_sets(store: Reader, task_id: str, year: int | None) -> dict[str, list[Any]]:
    """The (year, qym, dept_code) prefixes an item's raw ``case_state`` rows live under,
    from the aggregate projection ``p_item_keys`` (one row per item, year, region and
    department per part), as parameters ``k_year``, ``k_qym``, ``k_dept``."""
    params: dict[str, Any] = {"k_t": task_id}
    within = ""
    if year is not None:
        within, params["k_y"] = " AND year = {k_y:UInt16}", year
    rows = store.query(
        "SELECT year, qym, dept_code FROM case_state"
        f" WHERE task_id = {{k_t:String}}{within} GROUP BY task_id, year, qym, dept_code",
        params)
    return {"k_year": sorted({r["year"] for r in rows}), "k_qym": sorted({r["qym"] for r in rows}),
            "k_dept": sorted({r["dept_code"] for r in rows})}


ITEM_PREFIX_IN = ("year IN {k_year:Array(UInt16)} AND qym IN {k_qym:Array(String)}"
                  " AND dept_code IN {k_dept:Array(String)}")


def anomaly_current(raw_where: str) -> str:
    """A FROM source equal to ``anomaly FINAL`` restricted to the keys of the raw rows
    matching ``raw_where``, in one read: those raw rows (through ``p_case_no`` or
    ``p_code``), the newest version of each key, tombstones dropped. ``raw_where`` may
    only test ``case_no``, ``receiver_id`` and ``code``: every version of a key shares
    them (``anomaly_id`` hashes them, rules.anomaly_id), so the raw rows hold each found
    key's every version, newest included, and nothing else is needed. Versions are unique
    per key (one shard's clock writes a key, archwatch.engine.VersionClock), so the newest
    is what FINAL keeps. 13-15 ms at 5M anomalies, where FINAL over the keys of an ``IN``
    subquery took 23: it read the found keys' granules again."""
    return ("(SELECT * FROM (SELECT * FROM anomaly WHERE " + raw_where
            + " ORDER BY version DESC LIMIT 1 BY opened_at, anomaly_id) WHERE is_deleted = 0)")


RECEIVER_DOWN = "code = 'RECEIVER_DOWN'"
