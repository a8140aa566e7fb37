"""Anomaly feed and summary, with the same filters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from archwatch.api.auth import KPI_COLUMNS, Principal, ReaderDep
from archwatch.api.deps import PageDep, ReadsDep
from archwatch.api.errors import ApiError
from archwatch.api.models import AnomalyOut, AnomalySummary, Paged
from archwatch.api.queries import ANOMALY_COLUMNS, anomaly_out, page_total
from fastapi import APIRouter, Depends, Query

from archwatch.casedoc import CASE_DOCS, current
from archwatch.lookups import anomaly_current
from archwatch.rules import CLASS_OF_CODE
from archwatch.store import Reader

router = APIRouter(prefix="/api/v1/anomalies", tags=["anomalies"])

Code = Annotated[str | None, Query(max_length=64)]


class AnomalyClass(StrEnum):
    missing = "漏"
    wrong = "错"
    duplicated = "重"
    link = "link"


class Status(StrEnum):
    open = "open"
    resolved = "resolved"


class AnomalyFilter:
    """Filters shared by the list and the summary: SQL conditions on ``anomaly``'s columns
    and, for one case's anomalies (``caseNo``, read from ``case_doc``, 0018), the same
    conditions as a predicate on the rows :func:`casedoc.current` gives (a Hypothesis test
    holds the two to the same answers)."""

    def __init__(
        self,
        code: Annotated[list[str] | None, Query(description="one or more codes")] = None,
        cls: Annotated[AnomalyClass | None, Query(alias="class", description="漏, 错, 重 or link")] = None,  # noqa: E501
        status: Annotated[Status | None, Query()] = None,
        qym: Code = None,
        deptCode: Code = None,  # noqa: N803
        systemCode: Code = None,  # noqa: N803
        caseNo: Code = None,  # noqa: N803
        receiverId: Code = None,  # noqa: N803
        openedFrom: Annotated[datetime | None, Query(description="RFC 3339, inclusive")] = None,  # noqa: N803
        openedTo: Annotated[datetime | None, Query(description="RFC 3339, exclusive")] = None,  # noqa: N803
    ) -> None:
        self.parts: list[str] = []
        self.params: dict[str, Any] = {}
        self.checks: list[Callable[[dict[str, Any]], bool]] = []
        if code:
            self._add("code IN {codes:Array(String)}", codes=code)
            codes = frozenset(code)
            self.checks.append(lambda r: r["code"] in codes)
        if cls is not None:
            self._add("class = {cls:String}", cls=cls.value)
            self.checks.append(_equals("class", cls.value))
        for col, name, value in (("qym", "qym", qym), ("dept_code", "dept", deptCode),
                                 ("system_code", "sys", systemCode)):
            if value is not None:
                self._add(f"{col} = {{{name}:String}}", **{name: value})
                self.checks.append(_equals(col, value))
        # Up to here, conditions on anomaly_count's columns too (0014): with nothing else,
        # totals are sums of its rows (``measure`` for the status, ``open`` of them).
        self.group_parts = list(self.parts)
        self.countable = caseNo is None and receiverId is None and openedFrom is None \
            and openedTo is None
        self.measure, self.open = {None: ("total", "open"), Status.open: ("open", "open"),
                                   Status.resolved: ("total - open", "0")}[status]
        if status is Status.open:
            self.parts.append("resolved_at IS NULL")
            self.checks.append(lambda r: r["resolved"] is None)
        elif status is Status.resolved:
            self.parts.append("resolved_at IS NOT NULL")
            self.checks.append(lambda r: r["resolved"] is not None)
        for col, name, value in (("case_no", "case", caseNo), ("receiver_id", "recv", receiverId)):
            if value is not None:
                self._add(f"{col} = {{{name}:String}}", **{name: value})
                self.checks.append(_equals(col, value))
        # a case's rows from case_doc (0018: its current anomalies in one read of one
        # column, filtered here by ``checks``), a receiver's from its raw rows (p_code),
        # not FINAL over the table; few rows, so the list reads them at once rather than
        # through widening time windows
        self.case_no = caseNo or None  # (caseNo="": the rows without a case, by SQL)
        self.source = "anomaly FINAL"  # what the filters apply to
        if receiverId is not None:
            self.source = anomaly_current("receiver_id = {recv:String}")
        self.windowed = self.case_no is None and receiverId is None
        self.opened_to = ""  # the list's first window ends here (openedTo, else the newest)
        for op, name, value in ((">=", "from_ms", openedFrom), ("<", "to_ms", openedTo)):
            if value is not None:
                if value.tzinfo is None:
                    raise ApiError(400, "invalid_parameter", f"{name}: timestamp needs an offset")
                # a bound on the key itself (not on a function of it): a key-range read
                cond = f"opened_at {op} fromUnixTimestamp64Milli({{{name}:Int64}}, 'UTC')"
                bound = int(value.timestamp() * 1000)
                self._add(cond, **{name: bound})
                self.checks.append((lambda r, b=bound: r["opened"] >= b) if op == ">="
                                   else (lambda r, b=bound: r["opened"] < b))
                if op == "<":
                    self.opened_to = f" WHERE {cond}"

        self.requested = {"qym": qym, "deptCode": deptCode, "systemCode": systemCode}

    def scoped(self, p: Principal, counts: bool = False) -> tuple[str, dict[str, Any]]:
        """These filters within the caller's scope (asking outside it is a 403), for
        ``anomaly`` or, with ``counts``, for ``anomaly_count`` (only when ``countable``)."""
        p.narrow(self.requested)
        cond, params = p.conditions(KPI_COLUMNS)
        where = (" AND ".join(self.group_parts) or "1") if counts else self.where
        return f"{where} AND {cond}", {**self.params, **params}

    def case_rows(self, store: Reader, p: Principal) -> list[dict[str, Any]]:
        """With ``caseNo``: the case's current anomalies these filters (within the
        caller's scope) keep, newest first as the SQL orders them, keyed like
        ``ANOMALY_COLUMNS``."""
        p.narrow(self.requested)
        rows = current(r["doc"] for r in store.query(CASE_DOCS, {"c": self.case_no})).anomalies
        rows = [r for r in rows if p.allows(r, KPI_COLUMNS) and all(c(r) for c in self.checks)]
        rows.sort(key=lambda r: (-r["opened"], r["anomaly_id"]))  # opened DESC, anomaly_id
        return rows

    def _add(self, sql: str, **params: Any) -> None:
        self.parts.append(sql)
        self.params.update(params)

    @property
    def where(self) -> str:
        return " AND ".join(self.parts) or "1"


def _equals(column: str, value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r[column] == value


FilterDep = Annotated[AnomalyFilter, Depends()]


# The list's windows back from the newest anomaly, in days; then everything.
WINDOW_DAYS = (1, 8, 64, 512)


@router.get("", response_model=Paged[AnomalyOut])
def list_anomalies(store: ReadsDep, page: PageDep, p: ReaderDep,
                   f: FilterDep) -> Paged[AnomalyOut]:
    """Anomalies, newest first, filtered by code, class, status, area and time."""
    if f.case_no is not None:
        rows = f.case_rows(store, p)
        shown = rows[page.offset:page.offset + page.size]
        return Paged[AnomalyOut](  # (a page past the end reports 0, as page_total does)
            total=len(rows) if shown else 0, pageNo=page.no, pageSize=page.size,
            items=[AnomalyOut(**anomaly_out(r)) for r in shown])
    where, params = f.scoped(p)
    rows = newest_first(store, where, params, f.opened_to if f.windowed else None, page.size,
                        page.offset, f.source)
    if f.countable:  # the shards' counts, not every matching anomaly
        cwhere, cparams = f.scoped(p, counts=True)
        total = page_total(store, rows, page, f"anomaly_count FINAL WHERE {cwhere}", cparams,
                           f"sum({f.measure})")
    else:
        total = page_total(store, rows, page, f"{f.source} WHERE {where}", params)
    return Paged[AnomalyOut](total=total, pageNo=page.no, pageSize=page.size,
                             items=[AnomalyOut(**anomaly_out(r)) for r in rows])


def newest_first(store: Reader, where: str, params: dict[str, Any], opened_to: str | None,
                 size: int, offset: int, source: str = "anomaly FINAL"
                 ) -> list[dict[str, Any]]:
    """A page of ``{source} WHERE {where}``, newest first, read from a window of the
    newest keys (``anomaly`` is ordered by opened_at, 0013), widened until it holds the
    page. Exact: a full page from ``opened_at >= t`` is the page of the whole table, since
    every row outside the window opened before every row in it; and every version of a
    key shares its opened_at, so FINAL over a key range is FINAL restricted to it.
    ``opened_to``: the filter's own upper bound (``" WHERE ..."`` or ``""``); None reads
    the whole table at once (a filter that already selects a few keys)."""
    def page(window: str) -> list[dict[str, Any]]:
        return store.query(
            f"SELECT {ANOMALY_COLUMNS} FROM {source} WHERE {where}{window}"
            f" ORDER BY opened_at DESC, anomaly_id LIMIT {size} OFFSET {offset}", params)

    for days in WINDOW_DAYS if opened_to is not None else ():
        rows = page(f" AND opened_at >= (SELECT max(opened_at) FROM anomaly{opened_to})"
                    f" - toIntervalDay({days})")
        if len(rows) == size:
            return rows
    return page("")


@router.get("/summary", response_model=AnomalySummary)
def summary(store: ReadsDep, p: ReaderDep, f: FilterDep) -> AnomalySummary:
    """Totals and open counts per code and per class (漏/错/重/link)."""
    if f.countable:  # the shards' counts, not every matching anomaly
        where, params = f.scoped(p, counts=True)
        rows = store.query(  # (aliases apart from the columns they sum)
            f"SELECT code, sum({f.measure}) AS n_total, sum({f.open}) AS n_open"
            f" FROM anomaly_count FINAL WHERE {where} GROUP BY code HAVING n_total != 0"
            " ORDER BY code", params)
        rows = [{"code": r["code"], "total": r["n_total"], "open": r["n_open"]} for r in rows]
    elif f.case_no is not None:
        counted: dict[str, dict[str, Any]] = {}
        for r in f.case_rows(store, p):
            c = counted.setdefault(r["code"], {"code": r["code"], "total": 0, "open": 0})
            c["total"] += 1
            c["open"] += r["resolved"] is None
        rows = [counted[code] for code in sorted(counted)]
    else:
        where, params = f.scoped(p)
        rows = store.query(
            f"SELECT code, count() AS total, countIf(resolved_at IS NULL) AS open"
            f" FROM {f.source} WHERE {where} GROUP BY code ORDER BY code", params)
    by_code = {r["code"]: {"total": r["total"], "open": r["open"]} for r in rows}
    by_class: dict[str, dict[str, int]] = {}
    for code, c in by_code.items():
        k = by_class.setdefault(CLASS_OF_CODE.get(code, "?"), {"total": 0, "open": 0})
        k["total"] += c["total"]
        k["open"] += c["open"]
    return AnomalySummary.model_validate({"byCode": by_code, "byClass": by_class})
