"""Response models (pydantic v2): they are the OpenAPI schema clients code against."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class KpiStats(BaseModel):
    kpi: int = Field(description="cases completed (应归档办件数)")
    archived: int = Field(description="cases with at least one receipt")
    archivedSucc: int
    archivedFail: int
    unArchived: int
    archiveRate: float = Field(description="archived / kpi (归档率)")
    errorRate: float = Field(description="archivedFail / archived (归档错误率)")
    timeDiff: float = Field(description="mean days to first receipt (归档周期), 2 decimals")
    lastReceive: str | None = Field(description="latest first receipt, Asia/Shanghai")
    lastUpdate: str | None = Field(description="when the numbers last changed, Asia/Shanghai")


class KpiGroup(KpiStats):
    key: dict[str, str] = Field(description="the grouping values, e.g. {'qym': '330102'}")
    name: str | None = Field(default=None, description="display name of the last key")
    names: dict[str, str | None] = Field(
        default_factory=dict, description="display name of each named key, e.g. {'qym': '上城区'}")


class Paged(BaseModel, Generic[T]):
    total: int
    pageNo: int
    pageSize: int
    items: list[T]


class AnomalyOut(BaseModel):
    anomalyId: str
    code: str
    anomalyClass: str = Field(alias="class")
    caseNo: str | None
    archiveNo: str | None
    receiverId: str | None
    qym: str | None
    deptCode: str | None
    systemCode: str | None
    taskCode: str | None
    openedAt: str
    resolvedAt: str | None
    detail: str

    model_config = {"populate_by_name": True}


class CountPair(BaseModel):
    total: int
    open: int


class AnomalySummary(BaseModel):
    byCode: dict[str, CountPair]
    byClass: dict[str, CountPair]


class CaseOut(BaseModel):
    caseNo: str
    taskId: str
    taskCode: str
    taskName: str
    deptCode: str
    deptName: str
    qym: str
    area: str
    systemCode: str
    systemName: str
    systemLevel: str
    completedAt: str
    firstReceivedAt: str | None
    archiveCount: int
    status: str
    year: int


class TraceEvent(BaseModel):
    eventId: str
    type: str
    occurredAt: str
    source: str
    archiveNo: str | None
    payload: dict[str, Any]


class CaseTrace(BaseModel):
    caseNo: str
    case: CaseOut | None = Field(description="null when no case.completed is known (orphan)")
    events: list[TraceEvent]
    anomalies: list[AnomalyOut]


class CheckOut(BaseModel):
    eventId: str
    caseNo: str
    occurredAt: str
    passed: bool
    failedItems: list[str]
    failedProperties: list[str] = Field(description="真实性/完整性/可用性/安全性 of failed items")


class DailyLog(BaseModel):
    day: str
    received: int
    passed: int
    failed: int
    unchecked: int
