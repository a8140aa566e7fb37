"""Primary-key reads of ``case_state`` and ``anomaly`` rows found by a column that is not
their sorting key's prefix (issue #10, query latency). Here, not under ``api/``: the
distribution queue asks the same questions.

A case by its number needs none of this: ``case_doc`` (0018, one column,
archwatch/casedoc.py) holds both tables again ordered by case number.

``FINAL`` (the current row of each key) cannot use a projection, and a filter on a column
past the key's prefix makes it read every part's rows. So an item's cases are read in two
steps:

1. the item's key prefixes from its raw rows through the ``p_item_keys`` projection
   (0012) — a superset of the current rows' keys, since the current row of a key is one
   of its raw rows;
2. ``FINAL`` over exactly those keys, with the caller's filter applied again: a
   primary-key read of a few granules.

A receiver's or a code's anomalies need one step (:func:`anomaly_current`): the raw rows
through the ``p_code`` projection (0013) already hold every version of each key found.

The key sets are passed as arrays per column (``year IN … AND qym IN …``): their cross
product is a superset of the keys found, which only widens step 2's primary-key ranges;
every row returned still passes the caller's filter, so the answer is the same.
"""

from __future__ import annotations

from typing import Any

from archwatch.store import Reader


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
    matching ``raw_where``, in one read: those raw rows (through ``p_code``), the newest
    version of each key, tombstones dropped. ``raw_where`` may only test ``receiver_id``
    and ``code`` (a case's anomalies: ``case_doc``, 0018, whose key starts with the case
    number; the projection by case went): every version of a key shares
    them (``anomaly_id`` hashes them, rules.anomaly_id), so the raw rows hold each found
    key's every version, newest included, and nothing else is needed. Versions are unique
    per key (one shard's clock writes a key, archwatch.engine.VersionClock), so the newest
    is what FINAL keeps. 13-15 ms at 5M anomalies, where FINAL over the keys of an ``IN``
    subquery took 23: it read the found keys' granules again."""
    return ("(SELECT * FROM (SELECT * FROM anomaly WHERE " + raw_where
            + " ORDER BY version DESC LIMIT 1 BY opened_at, anomaly_id) WHERE is_deleted = 0)")


RECEIVER_DOWN = "code = 'RECEIVER_DOWN'"
