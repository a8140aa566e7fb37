"""KPI statistics and the drill-down chains region → department → item → case and
system level → system → item → case."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from archwatch.api.auth import Principal, ReaderDep
from archwatch.api.deps import PageDep, ReadsDep
from archwatch.api.kpicube import cube_of
from archwatch.api.models import CaseOut, KpiGroup, Paged
from archwatch.api.queries import DIMENSIONS, KpiQuery, kpi_groups_async, where_of
from fastapi import APIRouter, Query

from archwatch.lookups import ITEM_PREFIX_IN, item_prefix_sets
from archwatch.timeutil import to_iso_utc

router = APIRouter(prefix="/api/v1", tags=["statistics"])

Year = Annotated[int | None, Query(ge=1990, le=2100, description="calendar year, Asia/Shanghai")]
Code = Annotated[str | None, Query(max_length=64)]


class Sort(StrEnum):
    key = "key"
    archiveRate = "archiveRate"
    errorRate = "errorRate"
    timeDiff = "timeDiff"
    kpi = "kpi"
    archived = "archived"
    unArchived = "unArchived"
    archivedFail = "archivedFail"


class Order(StrEnum):
    asc = "asc"
    desc = "desc"


SortQ = Annotated[Sort, Query(description="e.g. archiveRate with order=asc: worst first")]
OrderQ = Annotated[Order, Query()]


async def _paged(store: Any, page: Any, group_by: list[str], filters: dict[str, Any],
                 sort: Sort, order: Order, p: Principal) -> Paged[KpiGroup]:
    # async routes: a read the cube answers stays on the event loop (kpi_groups_async)
    rows, total = await kpi_groups_async(store, KpiQuery(
        group_by, p.narrow(filters), sort.value, order is Order.desc, page.size, page.offset))
    return Paged[KpiGroup](total=total, pageNo=page.no, pageSize=page.size,
                           items=[KpiGroup(**r) for r in rows])


@router.get("/stats", response_model=Paged[KpiGroup])
async def stats(
    store: ReadsDep, page: PageDep, p: ReaderDep,
    groupBy: Annotated[str, Query(description="comma-separated: year,qym,deptCode,systemCode,systemLevel,taskId")] = "year",  # noqa: E501, N803
    year: Year = None, qym: Code = None, deptCode: Code = None,  # noqa: N803
    systemCode: Code = None, systemLevel: Code = None,  # noqa: N803
    sort: SortQ = Sort.key, order: OrderQ = Order.asc,
) -> Paged[KpiGroup]:
    """KPI numbers (archive rate, mean cycle, error rate) grouped by any dimensions."""
    from archwatch.api.errors import ApiError

    dims = [d.strip() for d in groupBy.split(",") if d.strip()]
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown or len(set(dims)) != len(dims):
        raise ApiError(400, "invalid_parameter",
                       f"groupBy: unknown or repeated dimension {unknown or dims}; "
                       f"use {', '.join(DIMENSIONS)}")
    filters = {"year": year, "qym": qym, "deptCode": deptCode, "systemCode": systemCode,
               "systemLevel": systemLevel}
    return await _paged(store, page, dims, filters, sort, order, p)


@router.get("/drill/regions", response_model=Paged[KpiGroup])
async def regions(store: ReadsDep, page: PageDep, p: ReaderDep, year: Year = None,
                  sort: SortQ = Sort.key, order: OrderQ = Order.asc) -> Paged[KpiGroup]:
    """Level 1 of region drill-down: one row per region (qym)."""
    return await _paged(store, page, ["qym"], {"year": year}, sort, order, p)


@router.get("/drill/regions/{qym}/departments", response_model=Paged[KpiGroup])
async def departments(store: ReadsDep, page: PageDep, p: ReaderDep, qym: str, year: Year = None,
                      sort: SortQ = Sort.key, order: OrderQ = Order.asc) -> Paged[KpiGroup]:
    """Level 2: the departments of one region."""
    return await _paged(store, page, ["deptCode"], {"year": year, "qym": qym}, sort, order, p)


@router.get("/drill/regions/{qym}/departments/{deptCode}/items", response_model=Paged[KpiGroup])
async def dept_items(store: ReadsDep, page: PageDep, p: ReaderDep, qym: str,
                     deptCode: str,  # noqa: N803
                     year: Year = None, sort: SortQ = Sort.key,
                     order: OrderQ = Order.asc) -> Paged[KpiGroup]:
    """Level 3: the service items of one department."""
    return await _paged(store, page, ["taskId"],
                        {"year": year, "qym": qym, "deptCode": deptCode}, sort, order, p)


@router.get("/drill/levels", response_model=Paged[KpiGroup])
async def levels(store: ReadsDep, page: PageDep, p: ReaderDep, year: Year = None,
                 sort: SortQ = Sort.key, order: OrderQ = Order.asc) -> Paged[KpiGroup]:
    """Level 1 of system drill-down: 国/省/市."""
    return await _paged(store, page, ["systemLevel"], {"year": year}, sort, order, p)


@router.get("/drill/levels/{systemLevel}/systems", response_model=Paged[KpiGroup])
async def systems(store: ReadsDep, page: PageDep, p: ReaderDep,
                  systemLevel: str,  # noqa: N803
                  year: Year = None, sort: SortQ = Sort.key,
                  order: OrderQ = Order.asc) -> Paged[KpiGroup]:
    """Level 2: the business systems of one level."""
    return await _paged(store, page, ["systemCode"],
                        {"year": year, "systemLevel": systemLevel}, sort, order, p)


@router.get("/drill/systems/{systemCode}/items", response_model=Paged[KpiGroup])
async def system_items(store: ReadsDep, page: PageDep, p: ReaderDep,
                       systemCode: str,  # noqa: N803
                       year: Year = None, sort: SortQ = Sort.key,
                       order: OrderQ = Order.asc) -> Paged[KpiGroup]:
    """Level 3: the service items of one business system."""
    return await _paged(store, page, ["taskId"], {"year": year, "systemCode": systemCode},
                        sort, order, p)


CASE_SORTS = {"caseNo": "case_no", "completedAt": "completed_at",
              "firstReceivedAt": "first_received_at", "status": "status"}


@router.get("/drill/items/{taskId}/cases", response_model=Paged[CaseOut])
def item_cases(
    store: ReadsDep, page: PageDep, p: ReaderDep, taskId: str,  # noqa: N803
    year: Year = None,
    qym: Code = None, deptCode: Code = None, systemCode: Code = None,  # noqa: N803
    status: Annotated[str | None, Query(pattern="^(PENDING|MISSING|ARCHIVED_OK|ARCHIVED_FAIL|ARCHIVED_UNCHECKED)$")] = None,  # noqa: E501
    sort: Annotated[str, Query(pattern="^(caseNo|completedAt|firstReceivedAt|status)$")] = "caseNo",
    order: OrderQ = Order.asc,
) -> Paged[CaseOut]:
    """Level 4 (both chains): the cases of one item, each linking to its trace."""
    filters = p.narrow({"taskId": taskId, "year": year, "qym": qym, "deptCode": deptCode,
                        "systemCode": systemCode})
    where, params = where_of(filters)
    if status is not None:
        where += " AND status = {status:String}"
        params["status"] = status
    # kpi_item in memory (archwatch.api.kpicube), when the app holds it: the item's key
    # prefixes, and the total without a status filter (an item's KPI group counts
    # exactly its cases with a row: kpi_item's kpi)
    cube = cube_of(store)
    if filters["qym"] is None or filters["deptCode"] is None:
        # Without region and department the sorting key (year, qym, dept_code, task_id,
        # case_no) narrows nothing past the year: take the item's key prefixes from its raw
        # rows (every current row is one of them) through the p_item_keys projection (0012),
        # so that FINAL reads primary-key ranges.
        prefixes = (cube.item_prefixes(filters["taskId"], filters["year"]) if cube is not None
                    else item_prefix_sets(store, filters["taskId"], filters["year"]))
        if not prefixes["k_year"]:
            return Paged[CaseOut](total=0, pageNo=page.no, pageSize=page.size, items=[])
        where += f" AND {ITEM_PREFIX_IN}"
        params.update(prefixes)
    # The page and the total in one read: count() OVER () counts the matching rows before
    # the LIMIT, over the key and filter columns that FINAL reads anyway, and ClickHouse
    # reads the page's other columns lazily (for its 20 rows only). Measured at 3M and 10M
    # cases: 1.5-2x faster than the page plus a count() of its own (a second FINAL read),
    # and faster than keys first then the rows by key (two FINAL reads).
    # (With the cube and no status filter the total is the KPI count instead: the window
    # costs ~9 of the page's ~30 ms at 100M cases.)
    counted = cube is not None and status is None
    rows = store.query(item_page_sql(where, sort, order, counted, page.size, page.offset),
                       params)
    total = 0  # a page past the end reports 0, as before
    if rows:
        total = cube.count(filters) if counted and cube is not None else int(rows[0]["n_total"])
    return Paged[CaseOut](total=total, pageNo=page.no, pageSize=page.size,
                          items=[case_out(r) for r in rows])


def item_page_sql(where: str, sort: str, order: Order, counted: bool, size: int,
                  offset: int) -> str:
    """The item case page's one read: its rows, with the total unless ``counted``."""
    # No read in order: with region and department given, ORDER BY case_no follows the
    # sorting key, and reading in order makes FINAL split the key range into streams that
    # it merges (ReplacingSorted each, then MergingSorted) even where ranges of different
    # parts do not overlap; without it FINAL skips merging such ranges (a merged store's
    # single part: filter only). Measured at 100M cases: 18.7 -> 15.1 ms of CPU a page
    # (region chain, caseNo); on a year's 31M cases 17.1 -> 13.1 ms in one part, 37.2 ->
    # 28.0 ms with 3% of them updated in three more parts. Other shapes unchanged (no
    # read in order to give up). bench/reads.py times this read.
    return (f"SELECT *, toUnixTimestamp64Milli(completed_at) AS c_ms,"
            f" toUnixTimestamp64Milli(first_received_at) AS f_ms"
            f"{'' if counted else ', count() OVER () AS n_total'}"
            f" FROM case_state FINAL WHERE {where}"
            f" ORDER BY {CASE_SORTS[sort]} {order.value.upper()}, case_no"
            f" LIMIT {int(size)} OFFSET {int(offset)}"
            " SETTINGS optimize_read_in_order = 0")


def case_out(r: dict[str, Any]) -> CaseOut:
    return CaseOut(
        caseNo=r["case_no"], taskId=r["task_id"], taskCode=r["task_code"],
        taskName=r["task_name"], deptCode=r["dept_code"], deptName=r["dept_name"], qym=r["qym"],
        area=r["area"], systemCode=r["system_code"], systemName=r["system_name"],
        systemLevel=r["system_level"], completedAt=to_iso_utc(r["c_ms"]),
        firstReceivedAt=to_iso_utc(r["f_ms"]), archiveCount=r["archive_count"],
        status=r["status"], year=r["year"])
