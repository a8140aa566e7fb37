"""The seed system's statistics endpoints, with its names, parameters and envelope."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from archwatch.api.auth import ReaderDep
from archwatch.api.deps import PageDep, ReadsDep
from archwatch.api.queries import KpiQuery, kpi_groups_async
from fastapi import APIRouter, Query

from archwatch.timeutil import SHANGHAI

router = APIRouter(prefix="/gdtjapi/charts", tags=["seed"])


def _current_year() -> int:
    return datetime.now(SHANGHAI).year


def _envelope(data: Any, started: float) -> dict[str, Any]:
    return {"code": 200, "message": "操作成功", "data": data,
            "timestamp": int(time.time() * 1000),
            "executeTime": round((time.perf_counter() - started) * 1000)}


def _seed_row(g: dict[str, Any], year: int) -> dict[str, Any]:
    return {
        "year": str(year), "kpi": g["kpi"], "archived": g["archived"],
        "archivedSucc": g["archivedSucc"], "archivedFail": g["archivedFail"],
        "UnArchived": g["unArchived"], "timeDiff": g["timeDiff"],
        "lastReceive": g["lastReceive"], "lastUpdate": g["lastUpdate"],
    }


@router.get("/taskArchiveList")
async def task_archive_list(
    store: ReadsDep,
    p: ReaderDep,
    page: PageDep,
    qym: Annotated[str, Query(min_length=1, max_length=32, description="region code")],
    deptCode: Annotated[str, Query(min_length=1, max_length=64)],  # noqa: N803
    year: Annotated[int | None, Query(ge=1990, le=2100)] = None,
) -> dict[str, Any]:
    """Archive statistics of one department's items in one region and year (seed API)."""
    started = time.perf_counter()
    y = year or _current_year()
    rows, total = await kpi_groups_async(store, KpiQuery(
        group_by=["taskId"], filters=p.narrow({"year": y, "qym": qym, "deptCode": deptCode}),
        sort="key", limit=page.size, offset=page.offset))
    records = []
    for g in rows:
        r = _seed_row(g, y)
        r.update({"taskId": g["key"]["taskId"], "taskName": g["name"], "qym": qym,
                  "deptCode": deptCode})
        records.append(r)
    data = {"records": records, "total": total, "pageNo": page.no, "pageSize": page.size}
    return _envelope(data, started)


@router.get("/sysView")
async def sys_view(
    store: ReadsDep,
    p: ReaderDep,
    page: PageDep,
    systemCode: Annotated[str | None, Query(max_length=64)] = None,  # noqa: N803
    year: Annotated[int | None, Query(ge=1990, le=2100)] = None,
) -> dict[str, Any]:
    """Archive statistics per business system in one year (seed API)."""
    started = time.perf_counter()
    y = year or _current_year()
    rows, total = await kpi_groups_async(store, KpiQuery(
        group_by=["systemCode", "systemLevel"],
        filters=p.narrow({"year": y, "systemCode": systemCode}),
        sort="key", limit=page.size, offset=page.offset))
    records = []
    for g in rows:
        r = _seed_row(g, y)
        r.update({"systemCode": g["key"]["systemCode"], "systemLevel": g["key"]["systemLevel"],
                  "systemName": g["names"]["systemCode"]})
        records.append(r)
    data = {"records": records, "total": total, "pageNo": page.no, "pageSize": page.size}
    return _envelope(data, started)

