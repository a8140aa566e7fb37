"""SQL behind the API. Every rollup reads ``kpi_item`` (one row an item, the sum of
``kpi_task``'s partials per shard: see :mod:`archwatch.rollup`), never all cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archwatch.api.kpicube import cube_of
from starlette.concurrency import run_in_threadpool

from archwatch.kpi import rate, time_diff_days
from archwatch.store import Reader
from archwatch.timeutil import to_iso_utc, to_shanghai_text

# API dimension -> (SQL column, ClickHouse type of its parameter, display-name aggregate)
DIMENSIONS: dict[str, tuple[str, str, str | None]] = {
    "year": ("year", "UInt16", None),
    "qym": ("qym", "String", "any(area)"),
    "deptCode": ("dept_code", "String", "any(dept_name)"),
    "systemCode": ("system_code", "String", "any(system_name)"),
    "systemLevel": ("system_level", "String", None),
    "taskId": ("task_id", "String", "any(task_name)"),
}

SORTS: dict[str, str] = {
    "archiveRate": "if(kpi = 0, 0, archived / kpi)",
    "errorRate": "if(archived = 0, 0, archived_fail / archived)",
    "timeDiff": "if(archived = 0, 0, cycle_ms_sum / archived)",
    "kpi": "kpi",
    "archived": "archived",
    "unArchived": "kpi - archived",
    "archivedFail": "archived_fail",
    "key": "",  # the group columns themselves
}


@dataclass
class KpiQuery:
    group_by: list[str]
    filters: dict[str, Any]
    sort: str = "key"
    desc: bool = False
    limit: int = 10
    offset: int = 0


def where_of(filters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``col = {dim:Type}`` conditions (and parameters) for the API dimensions given."""
    parts, params = [], {}
    for dim, value in filters.items():
        if value is None:
            continue
        col, typ, _ = DIMENSIONS[dim]
        parts.append(f"{col} = {{{dim}:{typ}}}")
        params[dim] = value
    return (" AND ".join(parts) or "1"), params


def kpi_groups(store: Reader, q: KpiQuery) -> tuple[list[dict[str, Any]], int]:
    """KPI numbers grouped by ``q.group_by``, filtered, sorted and paginated."""
    held = _cube_groups(store, q)
    return held if held is not None else _sql_groups(store, q)


async def kpi_groups_async(store: Reader, q: KpiQuery) -> tuple[list[dict[str, Any]], int]:
    """:func:`kpi_groups` for an ``async`` route: answered on the event loop when the
    cube holds it (tens of µs to a few ms of Python), in the thread pool when it reads
    the store. The hand-over to a pool thread and back, and the GIL passing between the
    two, cost a cached read more than its answer."""
    held = _cube_groups(store, q)
    return held if held is not None else await run_in_threadpool(_sql_groups, store, q)


def _cube_groups(store: Reader, q: KpiQuery) -> tuple[list[dict[str, Any]], int] | None:
    """:func:`kpi_groups` from kpi_item held in memory, or None when it is not held."""
    cube = cube_of(store)
    if cube is None:
        return None
    rows, total = cube.groups(q)
    return [_group_of(r, q) for r in rows], total


def _sql_groups(store: Reader, q: KpiQuery) -> tuple[list[dict[str, Any]], int]:
    where, params = where_of(q.filters)
    cols = [DIMENSIONS[d][0] for d in q.group_by]
    select_keys = ", ".join(f"toString({c}) AS k_{i}" for i, c in enumerate(cols))
    # each grouped dimension's display name (any() of the group's: names are not identity)
    names = {d: DIMENSIONS[d][2] for d in q.group_by if DIMENSIONS[d][2]}
    select_names = "".join(f"{agg} AS n_{d}, " for d, agg in names.items())
    name_agg = DIMENSIONS[q.group_by[-1]][2] if q.group_by else None
    direction = "DESC" if q.desc else "ASC"
    if SORTS[q.sort] or not cols:
        order = f"{SORTS[q.sort] or 'kpi'} {direction}"
    else:  # by the group columns themselves, each in the asked direction
        order = ", ".join(f"{c} {direction}" for c in cols)
    sql = f"""
        SELECT {select_keys + ',' if select_keys else ''} {select_names}
               {name_agg or "''"} AS name,
               sum(kpi) AS kpi, sum(archived) AS archived, sum(archived_succ) AS archived_succ,
               sum(archived_fail) AS archived_fail, sum(cycle_ms_sum) AS cycle_ms_sum,
               toUnixTimestamp64Milli(max(last_receive)) AS last_receive,
               toUnixTimestamp(max(last_update)) AS last_update,
               count() OVER () AS total
        FROM kpi_item FINAL
        WHERE {where}
        {'GROUP BY ' + ', '.join(cols) if cols else ''}
        HAVING kpi != 0
        ORDER BY {order}{', ' + ', '.join(cols) if cols else ''}
        LIMIT {int(q.limit)} OFFSET {int(q.offset)}
    """
    rows = store.query(sql, params)
    total = rows[0]["total"] if rows else _count_groups(store, q, where, params, cols)
    return [_group_of(r, q) for r in rows], total


def _group_of(r: dict[str, Any], q: KpiQuery) -> dict[str, Any]:
    """A group as the API gives it, from a row of :func:`kpi_groups`' SQL."""
    stats = stats_of(r)
    stats["key"] = {d: r[f"k_{i}"] for i, d in enumerate(q.group_by)}
    stats["name"] = r["name"] or None
    stats["names"] = {d: r[f"n_{d}"] or None for d in q.group_by if DIMENSIONS[d][2]}
    return stats


def _count_groups(store: Reader, q: KpiQuery, where: str, params: dict[str, Any],
                  cols: list[str]) -> int:
    if q.offset == 0:
        return 0
    group = f"GROUP BY {', '.join(cols)}" if cols else ""
    rows = store.query(
        f"SELECT count() AS n FROM (SELECT sum(kpi) AS kpi FROM kpi_item FINAL WHERE {where} "
        f"{group} HAVING kpi != 0)", params)
    return rows[0]["n"] if rows else 0


def page_total(store: Reader, rows: list[dict[str, Any]], page: Any, source: str,
               params: dict[str, Any], count: str = "count()") -> int:
    """How many rows ``SELECT ... FROM {source}`` has in all, for a page of it (``rows``,
    read with ``page.size``/``page.offset``). A short page tells it without a query; else a
    ``count()`` of its own: ``count() OVER ()`` on the page's query would make ClickHouse
    materialise every matching row (all columns) before the LIMIT. A page past the end
    reports 0, as it always has. ``count``: the aggregate, when ``source`` holds counts."""
    if not rows:
        return 0
    if len(rows) < page.size:
        return page.offset + len(rows)
    return int(store.query(f"SELECT {count} AS n FROM {source}", params)[0]["n"])


def stats_of(r: dict[str, Any]) -> dict[str, Any]:
    kpi, archived, fail = r["kpi"], r["archived"], r["archived_fail"]
    return {
        "kpi": kpi, "archived": archived, "archivedSucc": r["archived_succ"],
        "archivedFail": fail, "unArchived": kpi - archived,
        "archiveRate": round(rate(archived, kpi), 6), "errorRate": round(rate(fail, archived), 6),
        "timeDiff": time_diff_days(r["cycle_ms_sum"], archived),
        "lastReceive": to_shanghai_text(r["last_receive"]) if r["last_receive"] else None,
        "lastUpdate": to_shanghai_text(r["last_update"] * 1000) if r["last_update"] else None,
    }


def none_if_empty(v: str) -> str | None:
    return v if v != "" else None


ANOMALY_COLUMNS = (
    "anomaly_id, code, class, case_no, archive_no, receiver_id, qym, dept_code, system_code,"
    " task_code, toUnixTimestamp64Milli(opened_at) AS opened,"
    " toUnixTimestamp64Milli(resolved_at) AS resolved, detail"
)


def anomaly_out(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "anomalyId": r["anomaly_id"], "code": r["code"], "class": r["class"],
        "caseNo": none_if_empty(r["case_no"]), "archiveNo": none_if_empty(r["archive_no"]),
        "receiverId": none_if_empty(r["receiver_id"]), "qym": none_if_empty(r["qym"]),
        "deptCode": none_if_empty(r["dept_code"]),
        "systemCode": none_if_empty(r["system_code"]),
        "taskCode": none_if_empty(r["task_code"]), "openedAt": to_iso_utc(r["opened"]),
        "resolvedAt": to_iso_utc(r["resolved"]), "detail": r["detail"],
    }
