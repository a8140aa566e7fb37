"""Anomaly feed and summary, with the same filters."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from archwatch.api.auth import KPI_COLUMNS, Principal, ReaderDep
from archwatch.api.deps import PageDep, ReadsDep
from archwatch.api.models import AnomalyOut, AnomalySummary, Paged
from archwatch.api.queries import ANOMALY_COLUMNS, anomaly_out, page_total
from fastapi import APIRouter, Depends, Query

from archwatch.rules import CLASS_OF_CODE

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
    """Filters shared by the list and the summary."""

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
        if code:
            self._add("code IN {codes:Array(String)}", codes=code)
        if cls is not None:
            self._add("class = {cls:String}", cls=cls.value)
        if status is Status.open:
            self.parts.append("resolved_at IS NULL")
        elif status is Status.resolved:
            self.parts.append("resolved_at IS NOT NULL")
        for col, name, value in (("qym", "qym", qym), ("dept_code", "dept", deptCode),
                                 ("system_code", "sys", systemCode), ("case_no", "case", caseNo),
                                 ("receiver_id", "recv", receiverId)):
            if value is not None:
                self._add(f"{col} = {{{name}:String}}", **{name: value})
        if caseNo is not None:  # its keys from raw rows (p_case_no), so FINAL reads only them
            self.parts.append("(code, anomaly_id) IN (SELECT code, anomaly_id FROM anomaly"
                              " WHERE case_no = {case:String})")
        for op, name, value in ((">=", "from_ms", openedFrom), ("<", "to_ms", openedTo)):
            if value is not None:
                if value.tzinfo is None:
                    from archwatch.api.errors import ApiError

                    raise ApiError(400, "invalid_parameter", f"{name}: timestamp needs an offset")
                self._add(f"toUnixTimestamp64Milli(opened_at) {op} {{{name}:Int64}}",
                          **{name: int(value.timestamp() * 1000)})

        self.requested = {"qym": qym, "deptCode": deptCode, "systemCode": systemCode}

    def scoped(self, p: Principal) -> tuple[str, dict[str, Any]]:
        """These filters within the caller's scope (asking outside it is a 403)."""
        p.narrow(self.requested)
        cond, params = p.conditions(KPI_COLUMNS)
        return f"{self.where} AND {cond}", {**self.params, **params}

    def _add(self, sql: str, **params: Any) -> None:
        self.parts.append(sql)
        self.params.update(params)

    @property
    def where(self) -> str:
        return " AND ".join(self.parts) or "1"


FilterDep = Annotated[AnomalyFilter, Depends()]


@router.get("", response_model=Paged[AnomalyOut])
def list_anomalies(store: ReadsDep, page: PageDep, p: ReaderDep,
                   f: FilterDep) -> Paged[AnomalyOut]:
    """Anomalies, newest first, filtered by code, class, status, area and time."""
    where, params = f.scoped(p)
    rows = store.query(
        f"SELECT {ANOMALY_COLUMNS} FROM anomaly FINAL"
        f" WHERE {where} ORDER BY opened_at DESC, anomaly_id"
        f" LIMIT {page.size} OFFSET {page.offset}", params)
    total = page_total(store, rows, page, f"anomaly FINAL WHERE {where}", params)
    return Paged[AnomalyOut](total=total, pageNo=page.no, pageSize=page.size,
                             items=[AnomalyOut(**anomaly_out(r)) for r in rows])


@router.get("/summary", response_model=AnomalySummary)
def summary(store: ReadsDep, p: ReaderDep, f: FilterDep) -> AnomalySummary:
    """Totals and open counts per code and per class (漏/错/重/link)."""
    where, params = f.scoped(p)
    rows = store.query(
        f"SELECT code, count() AS total, countIf(resolved_at IS NULL) AS open"
        f" FROM anomaly FINAL WHERE {where} GROUP BY code ORDER BY code", params)
    by_code = {r["code"]: {"total": r["total"], "open": r["open"]} for r in rows}
    by_class: dict[str, dict[str, int]] = {}
    for code, c in by_code.items():
        k = by_class.setdefault(CLASS_OF_CODE.get(code, "?"), {"total": 0, "open": 0})
        k["total"] += c["total"]
        k["open"] += c["open"]
    return AnomalySummary.model_validate({"byCode": by_code, "byClass": by_class})
