"""The live anomaly feed as Server-Sent Events, resumable with ``Last-Event-ID``.

Besides each transition (``opened``, ``updated``, ``resolved``, ``withdrawn``), the feed
carries the regional groups of RECEIVER_DOWN that the deliverer forms
(``group_opened``, ``group_resolved``; archwatch/grouping.py), in the same ``seq`` order,
so a client that ignores unknown event names sees exactly what it saw before."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from archwatch.api.auth import KPI_COLUMNS, ReaderDep
from archwatch.api.deps import StoreDep
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from archwatch.notify import Outbox, alert_data

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0


def _event(r: dict[str, Any]) -> str:
    # a group notification (alert_notification) carries its payload; a transition its row
    data = {**json.loads(r["payload"]), "seq": r["seq"]} if "payload" in r else alert_data(r)
    return (f"id: {r['seq']}\nevent: {r['kind']}\n"
            f"data: {json.dumps(data, ensure_ascii=False)}\n\n")


def _merge(feed: list[dict[str, Any]], groups: list[dict[str, Any]],
           limit: int) -> list[dict[str, Any]]:
    """Both pages in seq order, cut where a full page could hide rows of the other."""
    rows = sorted(feed + groups, key=lambda r: r["seq"])
    cut = min([page[-1]["seq"] for page in (feed, groups) if len(page) >= limit],
              default=None)
    return rows if cut is None else [r for r in rows if r["seq"] <= cut]


@router.get("/stream")
async def stream(
    request: Request, store: StoreDep, p: ReaderDep,
    cls: Annotated[str | None, Query(alias="class", pattern="^(漏|错|重|link)$")] = None,
    code: Annotated[str | None, Query(max_length=64)] = None,
    qym: Annotated[str | None, Query(max_length=32)] = None,
    since: Annotated[int | None, Query(ge=0, description="resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Every anomaly transition (opened, updated, resolved, withdrawn) as it is written,
    in order; reconnect with Last-Event-ID to miss nothing. Without either, starts now."""
    filters = p.narrow({"qym": qym})
    cond, params = p.conditions(KPI_COLUMNS)
    parts = [cond]
    if filters.get("qym"):
        parts.append("qym = {f_qym:String}")
        params["f_qym"] = filters["qym"]
    if cls:
        parts.append("class = {f_cls:String}")
        params["f_cls"] = cls
    if code:
        parts.append("code = {f_code:String}")
        params["f_code"] = code
    where = " AND ".join(parts)
    group_where = " AND ".join(p for p in parts if not p.startswith("code ="))
    if code and code != "RECEIVER_DOWN":
        group_where = "0"
    start = last_event_id if last_event_id and last_event_id.isdigit() else since
    if start is None:
        rows = await asyncio.to_thread(
            store.query, "SELECT greatest((SELECT max(seq) FROM anomaly_feed), (SELECT"
            " max(seq) FROM alert_notification WHERE kind IN ('group_opened',"
            " 'group_resolved'))) AS m")
        start = int(rows[0]["m"]) if rows else 0
    cursor = int(start)
    outbox = Outbox(store)

    async def events() -> AsyncIterator[str]:
        nonlocal cursor
        yield "retry: 1000\n\n"
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            feed = await asyncio.to_thread(
                store.query,
                "SELECT seq, kind, anomaly_id, code, class, case_no, archive_no, receiver_id,"
                " qym, dept_code, system_code, task_code,"
                " toUnixTimestamp64Milli(opened_at) AS opened,"
                " toUnixTimestamp64Milli(resolved_at) AS resolved, detail"
                f" FROM anomaly_feed WHERE seq > {{cursor:UInt64}} AND {where}"
                " ORDER BY seq LIMIT 500", {**params, "cursor": cursor})
            groups = await asyncio.to_thread(outbox.group_events, cursor, group_where,
                                             params, 500)
            rows = _merge(feed, groups, 500)
            for r in rows:
                cursor = r["seq"]
                yield _event(r)
            if rows:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
