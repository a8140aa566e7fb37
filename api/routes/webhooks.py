"""Webhook subscriptions and their delivery status, managed by the system administrator.

Subscriptions say where anomaly notifications are POSTed (archwatch/notify.py); the
deliveries show, per webhook and notification, whether it was delivered, is retrying, or
is dead (gave up), and a dead or failed one can be sent again."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from archwatch.api.auth import AdminDep
from archwatch.api.deps import PageDep, StoreDep
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from archwatch.accounts import Accounts
from archwatch.lease import Lease
from archwatch.notify import (
    CURSOR,
    DEAD,
    DELIVERY_STATUSES,
    FAILED,
    LEASE,
    PENDING,
    Deliveries,
    Delivery,
    Webhook,
    Webhooks,
)
from archwatch.rules import CLASS_OF_CODE
from archwatch.timeutil import now_ms

router = APIRouter(prefix="/api/v1/admin/webhooks", tags=["admin"])
notifier_router = APIRouter(prefix="/api/v1/admin/notifier", tags=["admin"])
WID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
NID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z]-[0-9a-f]{32}$")]
Code = Literal[tuple(sorted(CLASS_OF_CODE))]  # type: ignore[valid-type]
Cls = Literal["漏", "错", "重", "link"]


class WebhookIn(BaseModel):
    """A subscription; empty filters match every notification."""

    webhookId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    url: str = Field(min_length=1, max_length=2048, description="http(s) URL POSTed to")
    secret: str | None = Field(default=None, min_length=16, max_length=256,
                               description="HMAC-SHA256 key; generated when omitted on "
                                           "creation, kept when omitted on a change")
    codes: list[Code] = Field(default=[], max_length=64)
    classes: list[Cls] = Field(default=[], max_length=4)
    qyms: list[Annotated[str, Field(pattern=r"^\d{6}$")]] = Field(default=[], max_length=500)
    enabled: bool = True


class WebhookOut(BaseModel):
    webhookId: str
    url: str
    codes: list[str]
    classes: list[str]
    qyms: list[str]
    enabled: bool
    createdBy: str
    createdAt: str | None
    updatedAt: str | None
    deliveries: dict[str, int] = Field(default={}, description="deliveries by status")
    secret: str | None = Field(default=None, description="only when set by this request")


class DeliveryOut(BaseModel):
    webhookId: str
    notificationId: str
    seq: int
    status: str
    attempts: int
    lastError: str | None
    lastStatus: int | None
    nextAttemptAt: str | None
    createdAt: str | None
    updatedAt: str | None
    deliveredAt: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    pageNo: int
    pageSize: int


class NotifierOut(BaseModel):
    cursor: int = Field(description="anomaly_feed seq the deliverer has read up to")
    notifications: dict[str, int] = Field(description="outbox rows by state")
    deliveries: dict[str, int] = Field(description="deliveries by status, all webhooks")
    activeDeliverer: str | None = Field(
        description="the deliverer holding the lease (one sends at a time; others stand "
                    "by), null when no lease is alive")


def _out(w: Webhook, counts: dict[str, int] | None = None,
         secret: str | None = None) -> WebhookOut:
    return WebhookOut(**w.public(), deliveries=counts or {}, secret=secret)


def _put(store: StoreDep, body: WebhookIn, actor: str) -> tuple[Webhook, str | None]:
    try:
        return Webhooks(store).put(body.webhookId, body.url, body.secret, body.codes,
                                   body.classes, body.qyms, body.enabled, actor=actor)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


@router.get("")
def list_webhooks(store: StoreDep, admin: AdminDep) -> list[WebhookOut]:
    """Every subscription (without secrets) with its deliveries by status."""
    counts = Deliveries(store).counts()
    return [_out(w, counts.get(w.webhook_id)) for w in Webhooks(store).all()]


@router.post("", status_code=201)
def create_webhook(body: WebhookIn, store: StoreDep, admin: AdminDep) -> WebhookOut:
    """Subscribe a URL; the secret is in this response only. Notifications written from
    now on are delivered to it."""
    if Webhooks(store).get(body.webhookId) is not None:
        raise ApiError(409, "exists", f"webhook {body.webhookId!r} exists")
    w, secret = _put(store, body, admin.username)
    Accounts(store).audit(admin.username, "webhook.create", w.webhook_id, w.url)
    return _out(w, secret=secret)


@notifier_router.get("")
def notifier_status(store: StoreDep, admin: AdminDep) -> NotifierOut:
    """Where the deliverer stands: its feed cursor, the outbox and the deliveries."""
    cur = store.query("SELECT seq FROM notifier_cursor FINAL WHERE name = {n:String}",
                      {"n": CURSOR})
    states = {r["state"]: r["n"] for r in store.query(
        "SELECT state, count() AS n FROM alert_notification FINAL GROUP BY state")}
    totals: dict[str, int] = {}
    for by_status in Deliveries(store).counts().values():
        for st, n in by_status.items():
            totals[st] = totals.get(st, 0) + n
    return NotifierOut(cursor=cur[0]["seq"] if cur else 0, notifications=states,
                       deliveries=totals,
                       activeDeliverer=Lease(store, LEASE, None, 0).holder_alive())


@router.get("/{webhookId}")
def get_webhook(webhookId: WID, store: StoreDep, admin: AdminDep) -> WebhookOut:  # noqa: N803
    w = Webhooks(store).get(webhookId)
    if w is None:
        raise ApiError(404, "not_found", f"no webhook {webhookId!r}")
    return _out(w, Deliveries(store).counts().get(webhookId))


@router.put("/{webhookId}")
def put_webhook(webhookId: WID, body: WebhookIn, store: StoreDep,  # noqa: N803
                admin: AdminDep) -> WebhookOut:
    """Replace a subscription (a new ``secret`` rotates it; omitted, it is kept)."""
    if body.webhookId != webhookId:
        raise ApiError(400, "invalid_parameter", "webhookId differs from the path")
    w, secret = _put(store, body, admin.username)
    Accounts(store).audit(admin.username, "webhook.put", w.webhook_id, w.url)
    return _out(w, Deliveries(store).counts().get(webhookId), secret)


@router.delete("/{webhookId}", status_code=204)
def delete_webhook(webhookId: WID, store: StoreDep, admin: AdminDep) -> Response:  # noqa: N803
    """Stop delivering to it (its pending deliveries become dead: webhook deleted)."""
    if not Webhooks(store).delete(webhookId):
        raise ApiError(404, "not_found", f"no webhook {webhookId!r}")
    Accounts(store).audit(admin.username, "webhook.delete", webhookId, "")
    return Response(status_code=204)


@router.get("/{webhookId}/deliveries")
def list_deliveries(
    webhookId: WID, store: StoreDep, admin: AdminDep, page: PageDep,  # noqa: N803
    status: Annotated[str | None, Query(pattern="^(" + "|".join(DELIVERY_STATUSES) + ")$")]
    = None,
) -> DeliveryPage:
    """One webhook's deliveries, newest first: status, attempts, last error."""
    rows, total = Deliveries(store).list(webhookId, status, page.size, page.offset)
    return DeliveryPage(items=[DeliveryOut(**d.public()) for d in rows], total=total,
                        pageNo=page.no, pageSize=page.size)


@router.post("/{webhookId}/deliveries/{notificationId}/retry")
async def retry_delivery(webhookId: WID, notificationId: NID, store: StoreDep,  # noqa: N803
                         admin: AdminDep) -> DeliveryOut:
    """Send a dead or failed delivery again now, with a fresh attempt count."""
    deliveries = Deliveries(store)

    def apply() -> Delivery:
        d = deliveries.find([(webhookId, notificationId)]).get((webhookId, notificationId))
        if d is None:
            raise ApiError(404, "not_found", "no such delivery")
        if d.status not in (DEAD, FAILED):
            raise ApiError(409, "conflict", f"the delivery is {d.status}")
        now = now_ms()
        new = deliveries.swap(d, Delivery(d.webhook_id, d.notification_id, d.seq, PENDING,
                                          0, d.last_error, d.last_status, now, d.created_at,
                                          now))
        if new is None:
            raise ApiError(409, "conflict", "the delivery changed meanwhile; try again")
        Accounts(store).audit(admin.username, "webhook.retry", webhookId, notificationId)
        return new

    return DeliveryOut(**(await asyncio.to_thread(apply)).public())
