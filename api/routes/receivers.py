"""District receiving systems: registry, HTTP heartbeats, state and uptime."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from archwatch.api.auth import Principal, ReaderDep, require
from archwatch.api.deps import StoreDep
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from pydantic import BaseModel, Field

from archwatch.accounts import Role
from archwatch.distribution import down_receivers
from archwatch.lookups import RECEIVER_DOWN, anomaly_current
from archwatch.receivers import MAX_WINDOWS, check_at, in_maintenance, parse_registration
from archwatch.registry import ReceiverEntry, Registry
from archwatch.timeutil import DAY_MS, SHANGHAI, now_ms, to_iso_utc

router = APIRouter(prefix="/api/v1", tags=["receivers"])
RID = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
ManagerDep = Annotated[Principal, Depends(require(Role.sysadmin, Role.city))]


class WindowIn(BaseModel):
    """A recurring maintenance window: no RECEIVER_DOWN opens inside it."""

    cron: str = Field(max_length=200, description="when it starts (5 cron fields, or 6 with "
                                                  "seconds first)", examples=["0 2 * * *"])
    duration: str = Field(max_length=40, description="ISO 8601 duration", examples=["PT2H"])
    tz: str | None = Field(default=None, max_length=64,
                           description="IANA time zone (default: the receiver's tz)")


class ReceiverIn(BaseModel):
    receiverId: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    qym: str = Field(pattern=r"^\d{6}$")
    owner: str = Field(default="", max_length=256, description="who to call when it is down")
    period: str = Field(default="PT1M", description="ISO 8601 duration between heartbeats")
    grace: str = Field(default="PT2M", description="ISO 8601 duration tolerated past period")
    schedule: str | None = Field(
        default=None, max_length=200, examples=["*/5 * * * *"],
        description="cron expression: a heartbeat is due at its next tick after the last "
                    "one (instead of period); 5 fields, or 6 with seconds first")
    tz: str = Field(default="Asia/Shanghai", max_length=64,
                    description="IANA time zone of schedule and maintenance windows")
    maintenance: list[WindowIn] = Field(default_factory=list, max_length=MAX_WINDOWS)
    downAfter: int | None = Field(
        default=None, description="consecutive missed checks before RECEIVER_DOWN opens "
                                  "(default: the engine's, 1)")
    upAfter: int | None = Field(
        default=None, description="consecutive good heartbeats before it resolves "
                                  "(default: the engine's, 1)")
    paused: bool = False


class HeartbeatIn(BaseModel):
    status: str | None = Field(default=None, pattern="^(ok|degraded)$")
    version: str | None = Field(default=None, max_length=64)


def _entry(body: ReceiverIn) -> ReceiverEntry:
    """The registry entry, or a 422 naming what cannot be used (a bad cron expression,
    time zone, duration or count): the same rules as a receivers file."""
    item = body.model_dump(exclude_none=True)
    if "period" not in body.model_fields_set:
        item.pop("period")  # with a schedule, only an explicit period is a conflict
    item["maintenance"] = [w.model_dump(exclude_none=True) for w in body.maintenance]
    try:
        r = parse_registration(item)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None
    return ReceiverEntry.of(r, body.owner, body.paused)


def _state(e: ReceiverEntry, last: int | None, down: bool, wm: int) -> str:
    if e.paused:
        return "paused"
    if last is None:
        return "new"
    if down:
        return "down"
    due = check_at(e.registration(), last)
    return "late" if due is not None and wm > due else "up"


@router.get("/receivers")
def list_receivers(store: StoreDep, p: ReaderDep, request: Request) -> list[dict[str, Any]]:
    """Registered receivers with state (new, up, late, down, paused) and last heartbeat;
    receivers heard from but not registered are listed as unregistered."""
    reg = Registry(store).all()
    status = {r["receiver_id"]: r for r in store.query(
        "SELECT receiver_id, qym, toUnixTimestamp64Milli(last_beat_at) AS last, beats,"
        " toUnixTimestamp64Milli(alert_after) AS alert_after FROM receiver_status FINAL")}
    open_down = down_receivers(store)
    now = now_ms()
    wm = now - request.app.state.settings.lateness_ms
    out = []
    for rid in sorted(set(reg) | set(status)):
        e, s = reg.get(rid), status.get(rid, {})
        qym = e.qym if e else s.get("qym", "")
        if p.qym and qym != p.qym:
            continue
        last = s.get("last")
        out.append({
            "receiverId": rid, "qym": qym, "owner": e.owner if e else None,
            "registered": e is not None,
            "state": _state(e, last, rid in open_down, wm) if e else "unregistered",
            "period": e.period_ms if e else None, "grace": e.grace_ms if e else None,
            "schedule": (e.schedule or None) if e else None, "tz": e.tz if e else None,
            "maintenance": [w.as_json() for w in e.maintenance] if e else [],
            "inMaintenance": bool(e and in_maintenance(e.registration(), now)),
            "downAfter": (e.down_after or None) if e else None,
            "upAfter": (e.up_after or None) if e else None,
            "alertAfter": to_iso_utc(s.get("alert_after")) if e and not e.paused else None,
            "lastBeatAt": to_iso_utc(last), "beats": s.get("beats", 0),
        })
    return out


@router.post("/receivers", status_code=201)
def register(body: ReceiverIn, store: StoreDep, who: ManagerDep) -> dict[str, Any]:
    """Register (or re-key) a receiver; the heartbeat key is in this response only."""
    key = Registry(store).register(_entry(body))
    request_audit(store, who, "receiver.register", body.receiverId)
    return {**body.model_dump(), "key": key}


@router.put("/receivers/{receiverId}")
def update(receiverId: RID, body: ReceiverIn, store: StoreDep,  # noqa: N803
           who: ManagerDep) -> dict[str, Any]:
    """Change period or schedule, grace, windows, flap counts, owner or pause; the key
    stays. Applies to gaps after it."""
    reg = Registry(store)
    old = reg.get(receiverId)
    if old is None or body.receiverId != receiverId:
        raise ApiError(404, "not_found", f"no receiver {receiverId!r}")
    reg.put(replace(_entry(body), key_hash=old.key_hash))
    request_audit(store, who, "receiver.update", receiverId)
    return body.model_dump()


@router.post("/heartbeats/{receiverId}", status_code=202)
async def heartbeat(receiverId: RID, request: Request, store: StoreDep,  # noqa: N803
                    x_receiver_key: Annotated[str, Header(max_length=128)],
                    body: HeartbeatIn | None = None) -> dict[str, str]:
    """A heartbeat over HTTP (key in X-Receiver-Key), published to the same Kafka topic
    the dataflow reads, so both paths are one."""
    settings = request.app.state.settings
    entry = await asyncio.to_thread(Registry(store).verify, receiverId, x_receiver_key)
    if entry is None:
        raise ApiError(401, "unauthorized", "unknown receiver or wrong key")
    if not settings.brokers:
        raise ApiError(503, "unavailable", "no Kafka broker configured for heartbeats")
    at = datetime.now(SHANGHAI).isoformat(timespec="milliseconds")
    event = {"eventId": f"hb-{receiverId}-{secrets.token_hex(8)}", "type": "receiver.heartbeat",
             "occurredAt": at, "source": receiverId, "receiverId": receiverId, "qym": entry.qym}
    if body is not None:
        event.update({k: v for k, v in body.model_dump().items() if v is not None})
    producer = _producer(request)

    def send() -> None:
        producer.produce(settings.topic_prefix + "archive.heartbeats",
                         json.dumps(event, ensure_ascii=False).encode(), receiverId.encode())
        producer.flush(5)

    try:
        await asyncio.to_thread(send)
    except Exception as exc:  # noqa: BLE001 - the receiver should retry, not see a trace
        raise ApiError(503, "unavailable", f"heartbeat not accepted: {exc}") from None
    return {"eventId": event["eventId"], "occurredAt": at}


def _producer(request: Request) -> Any:
    from archwatch.connectors.kafka import SafeProducer

    state = request.app.state
    if getattr(state, "producer", None) is None:
        state.producer = SafeProducer(state.settings.brokers)
    return state.producer


@router.get("/receivers/{receiverId}/uptime")
def uptime(receiverId: RID, store: StoreDep, p: ReaderDep,  # noqa: N803
           start: Annotated[date | None, Query(alias="from")] = None,
           end: Annotated[date | None, Query(alias="to")] = None) -> dict[str, Any]:
    """Down intervals (RECEIVER_DOWN) and availability per day (Asia/Shanghai)."""
    e = Registry(store).get(receiverId)
    if e is None or (p.qym and e.qym != p.qym):
        raise ApiError(404, "not_found", f"no receiver {receiverId!r}")
    today = datetime.now(SHANGHAI).date()
    end = end or today
    start = start or end - timedelta(days=6)
    if end < start or (end - start).days > 366:
        raise ApiError(400, "invalid_parameter", "from..to: at most 366 days, in order")
    rows = store.query(
        "SELECT toUnixTimestamp64Milli(opened_at) AS o, toUnixTimestamp64Milli(resolved_at) AS r"
        f" FROM {anomaly_current(RECEIVER_DOWN + ' AND receiver_id = {r:String}')}"
        " ORDER BY opened_at",
        {"r": receiverId})
    now = now_ms()
    intervals = [(r["o"], r["r"] if r["r"] is not None else now) for r in rows]
    days = []
    d = start
    while d <= end:
        lo = int(datetime(d.year, d.month, d.day, tzinfo=SHANGHAI).timestamp() * 1000)
        hi = min(lo + DAY_MS, now)
        span = max(hi - lo, 0)
        down = sum(max(0, min(b, hi) - max(a, lo)) for a, b in intervals)
        days.append({"day": d.isoformat(),
                     "availability": round(1 - down / span, 6) if span else None,
                     "downMs": down})
        d += timedelta(days=1)
    return {"receiverId": receiverId,
            "down": [{"from": to_iso_utc(a), "to": to_iso_utc(r["r"]), "open": r["r"] is None}
                     for (a, _b), r in zip(intervals, rows, strict=True)],
            "days": days, "generatedAt": datetime.now(UTC).isoformat()}


def request_audit(store: Any, who: Principal, action: str, target: str) -> None:
    from archwatch.accounts import Accounts

    Accounts(store).audit(who.username, action, target, "")


@router.get("/interface-errors")
def interface_errors(
    store: StoreDep, p: ReaderDep,
    receiverId: Annotated[str | None, Query(max_length=128)] = None,  # noqa: N803
) -> list[dict[str, Any]]:
    """interface.error events grouped into incidents by receiver and error code, with
    counts and first/last seen (newest first)."""
    params: dict[str, Any] = {}
    cond = "type = 'interface.error'"
    if receiverId:
        cond += " AND entity = {r:String}"
        params["r"] = receiverId
    if p.qym:
        cond += " AND JSONExtractString(payload, 'qym') = {q:String}"
        params["q"] = p.qym
    rows = store.query(
        "SELECT entity AS receiver, JSONExtractString(payload, 'errorCode') AS code,"
        " any(JSONExtractString(payload, 'qym')) AS qym,"
        " any(JSONExtractString(payload, 'endpoint')) AS endpoint,"
        " argMax(JSONExtractString(payload, 'message'), occurred_at) AS last_message,"
        " count() AS n, toUnixTimestamp64Milli(min(occurred_at)) AS first,"
        " toUnixTimestamp64Milli(max(occurred_at)) AS last"
        f" FROM event_log FINAL WHERE {cond} GROUP BY receiver, code"
        " ORDER BY last DESC LIMIT 500", params)
    return [{"receiverId": r["receiver"], "errorCode": r["code"], "qym": r["qym"],
             "endpoint": r["endpoint"], "count": r["n"], "firstSeen": to_iso_utc(r["first"]),
             "lastSeen": to_iso_utc(r["last"]), "lastMessage": r["last_message"]}
            for r in rows]
