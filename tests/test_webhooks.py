"""Webhook alert delivery: regional grouping (pure, frozen clock), retries with backoff,
signatures, exactly one acknowledged delivery per transition across restarts, the admin
API, and the real thing through ``archwatch up``."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient

from archwatch import grouping, metrics
from archwatch.accounts import Accounts, Role
from archwatch.engine import VersionClock, feed_row
from archwatch.grouping import GroupRule, Held
from archwatch.migrate import migrate
from archwatch.notify import (
    COUNT_KEYS,
    DEAD,
    DELIVERED,
    FAILED,
    READY,
    SENDING,
    Deliverer,
    Deliveries,
    HttpPoster,
    NotifySettings,
    Outbox,
    Webhooks,
    sign,
    verify,
)
from archwatch.rules import Anomaly
from archwatch.store import StoreError
from archwatch.timeutil import now_ms
from tests.kafka_helpers import ROOT, Archwatch, free_port, poll, prefix_for, serve_app
from tests.test_alerts import read_events
from tests.test_kafka import broker  # noqa: F401 - the session's real broker

S = 1000
RULE = GroupRule(window_ms=30 * S, min_size=3, settle_ms=2 * S)


# --------------------------------------------------------------------------- grouping

def opened(i: int, at: int, qym: str = "330106") -> Held:
    return Held(f"t-open-{i}", "opened", f"a{i}", f"recv-{i}", qym, at)


def resolved(i: int, at: int, qym: str = "330106") -> Held:
    return Held(f"t-res-{i}", "resolved", f"a{i}", f"recv-{i}", qym, at)


def test_five_receivers_down_together_make_one_group_after_the_window() -> None:
    t0 = 1_000_000
    held = [opened(i, t0 + i * 700) for i in range(5)] + [opened(9, t0 + 500, "330108")]
    # inside the window (and its settle time) nothing is decided: a sixth may still come
    early = grouping.plan(held, {}, t0 + 31 * S, RULE)
    assert not early
    p = grouping.plan(held, {}, t0 + 32 * S, RULE)
    assert len(p.groups) == 1 and p.release == []  # 330108's window closes 0.5 s later
    p = grouping.plan(held, {}, t0 + 33 * S, RULE)
    assert len(p.groups) == 1
    g = p.groups[0]
    assert g.qym == "330106" and g.start_ms == t0 and [h.receiver_id for h in g.members] == \
        [f"recv-{i}" for i in range(5)]
    assert g.group_id == grouping.group_id("330106", t0)
    assert set(p.absorbed) == {f"t-open-{i}" for i in range(5)}
    assert p.release == ["t-open-9"]  # alone in its region: sent on its own
    # deterministic: the same inputs give the same ids
    assert grouping.plan(held, {}, t0 + 40 * S, RULE).groups == p.groups


def test_too_few_or_too_far_apart_are_sent_one_by_one() -> None:
    t0 = 5_000_000
    two = [opened(1, t0), opened(2, t0 + 10 * S)]
    assert grouping.plan(two, {}, t0 + 60 * S, RULE).release == ["t-open-1", "t-open-2"]
    apart = [opened(1, t0), opened(2, t0 + 20 * S), opened(3, t0 + 31 * S)]
    p = grouping.plan(apart, {}, t0 + 100 * S, RULE)
    assert not p.groups and len(p.release) == 3  # the third falls in the next window
    off = grouping.plan([opened(i, t0) for i in range(5)], {}, t0,
                        GroupRule(window_ms=0))
    assert len(off.release) == 5 and not off.groups  # grouping off: nothing held


def test_the_next_window_waits_while_the_first_is_decided() -> None:
    t0 = 7_000_000
    held = [opened(i, t0 + i * S) for i in range(3)] + [opened(7, t0 + 40 * S)]
    p = grouping.plan(held, {}, t0 + 33 * S, RULE)
    assert len(p.groups) == 1 and p.release == []  # 7 opened a window still open


def test_group_resolution_batches_and_still_down() -> None:
    t0 = 9_000_000
    gid = grouping.group_id("330106", t0)
    g = grouping.Group(gid, "330106", t0, frozenset(f"a{i}" for i in range(5)))
    back = [resolved(i, t0 + 600 * S + i * S) for i in range(3)]
    assert not grouping.plan(back, {gid: g}, t0 + 620 * S, RULE)  # window still open
    p = grouping.plan(back, {gid: g}, t0 + 633 * S, RULE)
    assert len(p.resolutions) == 1
    r = p.resolutions[0]
    assert [h.anomaly_id for h in r.members] == ["a0", "a1", "a2"]
    assert r.still_down == ("a3", "a4") and not r.all_resolved
    assert set(p.absorbed) == {f"t-res-{i}" for i in range(3)}
    g2 = grouping.Group(gid, "330106", t0, g.members, frozenset({"a0", "a1", "a2"}))
    rest = [resolved(3, t0 + 900 * S), resolved(4, t0 + 905 * S)]
    p2 = grouping.plan(rest, {gid: g2}, t0 + 940 * S, RULE)
    assert p2.resolutions[0].all_resolved and p2.resolutions[0].group_id == gid


def test_a_restart_recomputes_the_announced_group_instead_of_a_second() -> None:
    t0 = 11_000_000
    held = [opened(i, t0 + i * S) for i in range(4)]
    gid = grouping.group_id("330106", t0)
    announced = grouping.Group(gid, "330106", t0, frozenset({"a0", "a1", "a2", "a3"}))
    p = grouping.plan(held, {gid: announced}, t0 + 60 * S, RULE)
    assert not p.groups and set(p.absorbed) == {f"t-open-{i}" for i in range(4)}
    # a member that arrives after the group was announced is sent on its own
    late = grouping.plan([opened(8, t0 + 5 * S)], {gid: announced}, t0 + 60 * S, RULE)
    assert late.release == ["t-open-8"] and not late.groups


def test_resolution_of_a_held_opening_waits_for_it() -> None:
    t0 = 13_000_000
    held = [opened(1, t0), resolved(1, t0 + 5 * S)]
    assert not grouping.plan(held, {}, t0 + 10 * S, RULE)
    p = grouping.plan(held, {}, t0 + 40 * S, RULE)
    assert p.release == ["t-open-1", "t-res-1"]


# --------------------------------------------------------------------------- pieces

def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    s = NotifySettings(base_delay_ms=1000, max_delay_ms=60_000, jitter=0.5)
    assert [s.backoff(n, 0.0) for n in range(1, 9)] == \
        [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
    assert [s.backoff(n, 0.999) for n in (1, 3)] == [500, 2001]
    assert s.backoff(1, 0.0, retry_after_ms=30_000) == 30_000  # the receiver's Retry-After
    assert s.backoff(1, 0.0, retry_after_ms=10**9) == 60_000


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"id":"t-1"}'
    sig = sign("s3cret-s3cret-s3cret", 1_700_000_000, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify("s3cret-s3cret-s3cret", "1700000000", body, sig, now_s=1_700_000_010)
    assert not verify("other-secret-000000", "1700000000", body, sig, now_s=1_700_000_010)
    assert not verify("s3cret-s3cret-s3cret", "1700000000", body + b" ", sig,
                      now_s=1_700_000_010)
    assert not verify("s3cret-s3cret-s3cret", "1700000000", body, sig,
                      now_s=1_700_000_000 + 3600)  # replayed an hour later


# --------------------------------------------------------------------------- receiver

class Receiver:
    """A tiny webhook receiver: records every POST; ``fail`` decides failures."""

    def __init__(self, fail: Callable[[int, dict[str, Any]], int | None] | None = None,
                 delay: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.fail = fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if delay:
                    time.sleep(delay)
                req = {"headers": {k.lower(): v for k, v in self.headers.items()},
                       "raw": raw, "body": json.loads(raw), "at": time.time()}
                with outer.lock:
                    outer.requests.append(req)
                    n = len(outer.requests)
                code = (outer.fail(n, req) if outer.fail else None) or 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def keys(self, ok_only: bool = False) -> Counter[str]:
        with self.lock:
            return Counter(r["headers"]["idempotency-key"] for r in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*a: Any, **kw: Any) -> Receiver:
        made.append(Receiver(*a, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


class FakeClock:
    def __init__(self) -> None:
        self.t = now_ms()

    def __call__(self) -> int:
        return self.t

    def sleep(self, ms: int) -> None:
        self.t += ms


_vclock = VersionClock()


def write_feed(store: Any, anomalies: list[Anomaly], kind: str = "opened",
               dup: bool = False) -> None:
    rows = [feed_row(a, kind, _vclock.next()) for a in anomalies]
    if dup:  # the feed is at-least-once: the same transition again under a new seq
        rows += [feed_row(a, kind, _vclock.next()) for a in anomalies]
    store.insert("anomaly_feed", rows)


def case_anomaly(i: int, qym: str = "330106", code: str = "MISSING_ARCHIVE") -> Anomaly:
    return Anomaly(f"case-a{i}", code, f"CASE{i:04d}", "", "", qym, "D1", "SYS1", "T1",
                   1_700_000_000_000 + i, None, f"detail {i}")


def down(i: int, qym: str, at: int, resolved_at: int | None = None) -> Anomaly:
    return Anomaly(f"down-{qym}-{i}", "RECEIVER_DOWN", "", "", f"recv-{qym}-{i}", qym, "", "",
                   "", at, resolved_at, f"beat-{i}")


# --------------------------------------------------------------------------- delivery

def test_a_failing_receiver_gets_the_alert_once_after_retries_with_backoff(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    migrate(store)
    rx = receiver(fail=lambda n, _r: 503 if n <= 3 else None)
    hook, secret = Webhooks(store).put("ops", rx.url, codes=["MISSING_ARCHIVE"])
    assert secret and len(secret) >= 32
    write_feed(store, [case_anomaly(1)], dup=True)
    write_feed(store, [case_anomaly(2, code="DUPLICATE_RECEIPT")])  # filtered out by code
    clock = FakeClock()
    s = NotifySettings(base_delay_ms=1000, max_delay_ms=4000, jitter=0.5, settle_ms=0)
    d = Deliverer(store, s, clock=clock, rng=lambda: 0.25)
    before = metrics.WEBHOOK_ATTEMPTS.labels("failed")._value.get()
    out = d.cycle()
    assert out["notifications"] == 1 and out["fannedOut"] == 1 and out["failed"] == 1
    waits = []
    for _ in range(10):
        (row,), _n = Deliveries(store).list("ops")
        if row.status == DELIVERED:
            break
        assert row.status == FAILED and "HTTP 503" in row.last_error
        waits.append(row.next_attempt_at - row.updated_at)
        assert d.cycle()["due"] == 0  # not before its time
        clock.sleep(row.next_attempt_at - clock())
        assert d.cycle()["due"] == 1
    assert waits == [875, 1750, 3500]  # base * 2^(n-1) * (1 - 0.5 * 0.25)
    assert row.status == DELIVERED and row.attempts == 4 and row.delivered_at
    assert rx.keys() == Counter({row.notification_id: 4})  # one transition, 4 POSTs
    last = rx.requests[-1]
    assert last["body"]["type"] == "anomaly.opened" and last["body"]["attempt"] == 4
    assert last["body"]["alert"]["caseNo"] == "CASE0001"
    assert last["body"]["id"] == last["headers"]["idempotency-key"]
    assert verify(secret, last["headers"]["x-archwatch-timestamp"], last["raw"],
                  last["headers"]["x-archwatch-signature"], now_s=clock() / 1000)
    assert metrics.WEBHOOK_ATTEMPTS.labels("failed")._value.get() - before == 3
    clock.sleep(10**7)
    for _ in range(3):  # delivered is final: later cycles send nothing
        assert d.cycle()["due"] == 0
    assert len(rx.requests) == 4


def test_gives_up_visibly_and_an_administrator_can_retry(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    migrate(store)
    broken = {"on": True}
    rx = receiver(fail=lambda _n, _r: 500 if broken["on"] else None)
    Webhooks(store).put("ops", rx.url)
    _, pw = Accounts(store).create("root", Role.sysadmin)
    write_feed(store, [case_anomaly(3)])
    clock = FakeClock()
    d = Deliverer(store, NotifySettings(base_delay_ms=10, max_attempts=3, settle_ms=0),
                  clock=clock)
    dead_before = metrics.WEBHOOK_DEAD._value.get()
    for _ in range(5):
        d.cycle()
        clock.sleep(10_000)
    (row,), _ = Deliveries(store).list("ops")
    assert row.status == DEAD and row.attempts == 3 and "gave up after 3" in row.last_error
    assert metrics.WEBHOOK_DEAD._value.get() - dead_before == 1
    assert len(rx.requests) == 3
    app = create_app(Settings(), store=store)
    with TestClient(app) as client:
        token = client.post("/api/v1/auth/login", json={"username": "root", "password": pw}
                            ).json()["accessToken"]
        h = {"Authorization": f"Bearer {token}"}
        hooks = client.get("/api/v1/admin/webhooks", headers=h).json()
        assert hooks[0]["deliveries"] == {"dead": 1} and "secret" not in str(hooks[0].values())
        page = client.get("/api/v1/admin/webhooks/ops/deliveries?status=dead", headers=h).json()
        assert page["total"] == 1 and page["items"][0]["lastStatus"] == 500
        status = client.get("/api/v1/admin/notifier", headers=h).json()
        assert status["deliveries"] == {"dead": 1} and status["cursor"] > 0
        assert status["activeDeliverer"] == d.lease.holder
        broken["on"] = False
        r = client.post(f"/api/v1/admin/webhooks/ops/deliveries/{row.notification_id}/retry",
                        headers=h)
        assert r.status_code == 200 and r.json()["status"] == "pending", r.text
        again = client.post(f"/api/v1/admin/webhooks/ops/deliveries/{row.notification_id}"
                            "/retry", headers=h)
        assert again.status_code == 409
    d.cycle()
    (row,), _ = Deliveries(store).list("ops")
    assert row.status == DELIVERED and len(rx.requests) == 4


def test_a_stop_mid_send_resends_only_the_unrecorded_post_after_the_lease(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    """In-process crash points: the POST reached the receiver but its answer was never
    recorded (at-least-once window, same Idempotency-Key); everything acknowledged
    before is never sent again; nothing is lost."""
    migrate(store)
    rx = receiver()
    Webhooks(store).put("ops", rx.url)
    write_feed(store, [case_anomaly(i) for i in range(10, 20)])
    clock = FakeClock()
    s = NotifySettings(lease_ms=30_000, settle_ms=0)
    poster = HttpPoster()
    sent = {"n": 0}

    class Killed(BaseException):
        pass

    def dying_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Any:
        answer = poster(url, body, headers, timeout)
        sent["n"] += 1
        if sent["n"] == 4:
            raise Killed  # the process dies after the 4th POST, before recording it
        return answer

    with pytest.raises(Killed):
        Deliverer(store, s, clock=clock, post=dying_post).cycle()
    assert len(rx.requests) == 4
    statuses = Counter(r.status for r in Deliveries(store).list("ops", limit=100)[0])
    assert statuses == Counter({DELIVERED: 3, SENDING: 1, "pending": 6})
    # a new deliverer (a restart): the unrecorded one waits for its lease
    again = Deliverer(store, s, clock=clock)
    again.cycle()
    assert len(rx.requests) == 10 and max(rx.keys().values()) == 1
    clock.sleep(30_000)
    again.cycle()
    keys = rx.keys()
    assert len(keys) == 10 and sorted(keys.values()) == [1] * 9 + [2]
    assert all(r.status == DELIVERED for r in Deliveries(store).list("ops", limit=100)[0])
    # the engine re-emits transitions after its own crash (same content, new seqs):
    # recognised by their transition id, not sent again
    write_feed(store, [case_anomaly(i) for i in range(10, 20)])
    clock.sleep(10**7)
    again.cycle()
    assert sum(rx.keys().values()) == 11
    poster.close()


def test_history_before_the_first_subscription_is_not_sent(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    migrate(store)
    rx = receiver()
    write_feed(store, [case_anomaly(i) for i in range(30, 35)])  # before any subscription
    time.sleep(0.01)
    Webhooks(store).put("ops", rx.url)
    write_feed(store, [case_anomaly(40)])
    d = Deliverer(store, NotifySettings(settle_ms=0))
    d.cycle()
    assert [r["body"]["alert"]["caseNo"] for r in rx.requests] == ["CASE0040"]
    time.sleep(0.01)
    Webhooks(store).put("late", rx.url)  # a later subscription: from its creation on
    write_feed(store, [case_anomaly(41)])
    d.cycle()
    got = sorted((r["body"]["webhookId"], r["body"]["alert"]["caseNo"]) for r in rx.requests)
    assert got == [("late", "CASE0041"), ("ops", "CASE0040"), ("ops", "CASE0041")]


def test_intake_reads_only_the_rows_a_subscription_or_the_grouping_wants(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    """The store picks the feed rows (Deliverer._wanted) the filters would pick: the
    grouping's RECEIVER_DOWN always, each enabled subscription's codes/qyms; none when
    nobody wants any; and the cursor passes the rows nobody wants, as after reading them."""
    migrate(store)
    url = receiver().url
    hooks = Webhooks(store)
    d = Deliverer(store, NotifySettings(settle_ms=0))
    assert d.intake(hooks.all()) == (0, 0)  # an empty feed: the cursor starts at its head
    kinds = [(qym, code) for qym in ("330106", "330108")
             for code in ("MISSING_ARCHIVE", "LATE_ARCHIVE")]

    def write(base: int) -> int:
        write_feed(store, [case_anomaly(base + i, qym, code)
                           for i, (qym, code) in enumerate(kinds)])
        write_feed(store, [down(base + i, "330106", 1_700_000_000_000 + i) for i in range(2)])
        return int(store.query("SELECT max(seq) AS m FROM anomaly_feed")[0]["m"])

    write(0)
    assert d.intake(hooks.all()) == (2, 2)  # nobody subscribed: the grouping's two
    time.sleep(0.01)
    hooks.put("late", url, codes=["LATE_ARCHIVE"], qyms=["330108"])
    hooks.put("missing", url, codes=["MISSING_ARCHIVE"], qyms=["330106"])
    hooks.put("cls", url, classes=["漏"], qyms=["330108"])  # 漏: MISSING_ and LATE_ARCHIVE
    hooks.put("off", url, enabled=False)  # takes everything, but is disabled
    write(10)
    made = Outbox(store).by_state(READY, 100)
    assert d.intake(hooks.all()) == (5, 5)  # 3 transitions subscribed to, 2 held downs
    got = {(n.code, n.qym) for n in Outbox(store).by_state(READY, 100)} - \
        {(n.code, n.qym) for n in made}
    assert got == {("LATE_ARCHIVE", "330108"), ("MISSING_ARCHIVE", "330106"),
                   ("MISSING_ARCHIVE", "330108")}

    quiet = Deliverer(store, NotifySettings(settle_ms=0, group=GroupRule(window_ms=0)))
    for w in ("late", "missing", "cls"):
        hooks.put(w, url, enabled=False)
    top = write(20)
    assert quiet.intake(hooks.all()) == (0, 0)  # nobody wants a row: none is read
    assert quiet.cursor() == top  # and they are behind the cursor, as if read
    hooks.put("all", url)
    write(30)
    assert quiet.intake(hooks.all()) == (6, 6)  # a subscription without filters: all


def test_grouped_region_through_the_store(store: Any, receiver: Callable[..., Receiver]
                                          ) -> None:
    """Five receivers of one region down within the window: one group.opened webhook
    (and later one group.resolved); a lone receiver elsewhere: its own alert."""
    migrate(store)
    rx = receiver()
    Webhooks(store).put("ops", rx.url, codes=["RECEIVER_DOWN"])
    Webhooks(store).put("other-region", rx.url, qyms=["330199"])
    clock = FakeClock()
    t0 = clock() - 1000
    five = [down(i, "330106", t0 + i * 300) for i in range(5)]
    write_feed(store, five + [down(1, "330108", t0 + 100)])
    s = NotifySettings(settle_ms=0, group=GroupRule(window_ms=3000, min_size=3,
                                                    settle_ms=1000))
    d = Deliverer(store, s, clock=clock)
    d.cycle()
    assert rx.requests == []  # held for the window
    clock.sleep(3100)
    d.cycle()
    types = Counter(r["body"]["type"] for r in rx.requests)
    assert types == Counter({"group.opened": 1, "anomaly.opened": 1})
    g = next(r["body"] for r in rx.requests if r["body"]["type"] == "group.opened")
    assert g["group"]["qym"] == "330106" and g["group"]["count"] == 5
    assert sorted(x["receiverId"] for x in g["group"]["receivers"]) == \
        [f"recv-330106-{i}" for i in range(5)]
    lone = next(r["body"] for r in rx.requests if r["body"]["type"] == "anomaly.opened")
    assert lone["alert"]["receiverId"] == "recv-330108-1"
    # they come back: one grouped resolution; resolved_at in the past closes it at once
    back = clock() - 5000
    write_feed(store, [down(i, "330106", t0 + i * 300, back + i) for i in range(5)],
               kind="resolved")
    d.cycle()
    clock.sleep(5000)
    d.cycle()
    res = [r["body"] for r in rx.requests if r["body"]["type"] == "group.resolved"]
    assert len(res) == 1 and res[0]["group"]["allResolved"]
    assert res[0]["group"]["groupId"] == g["group"]["groupId"]
    assert len(rx.requests) == 3
    # the live feed shows the groups too, in seq order, resumable
    _, pw = Accounts(store).create("viewer", Role.district, qym="330106")
    with serve(store) as base:
        token = httpx.post(f"{base}/api/v1/auth/login", json={
            "username": "viewer", "password": pw}).json()["accessToken"]
        events = sse(base, token, 0, 13 - 1)  # the region scope hides 330108
        assert [e["event"] for e in events] == \
            ["opened"] * 5 + ["group_opened"] + ["resolved"] * 5 + ["group_resolved"]
        ids = [e["id"] for e in events]
        assert ids == sorted(ids)
        grp = events[5]["data"]
        assert grp["code"] == "RECEIVER_DOWN" and grp["count"] == 5 and grp["qym"] == "330106"
        rest = sse(base, token, ids[5], 6)  # resumed after the group: misses nothing
        assert [e["id"] for e in rest] == ids[6:]
        only = sse(base, token, 0, 6, "&code=RECEIVER_DOWN&class=link")
        assert [e["event"] for e in only] == ["opened"] * 5 + ["group_opened"]


def test_a_receiver_that_hangs_holds_up_only_its_own_deliveries(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    """The slow receiver (its webhook comes first) answers only once the fast one has
    got its POST: delivered one after the other, the slow one would time out first."""
    migrate(store)
    fast_got = threading.Event()
    slow = receiver(fail=lambda _n, _r: None if fast_got.wait(8) else 504)
    fast = receiver(fail=lambda _n, _r: fast_got.set())
    Webhooks(store).put("a-slow", slow.url)
    Webhooks(store).put("b-fast", fast.url)
    write_feed(store, [case_anomaly(80)])
    d = Deliverer(store, NotifySettings(settle_ms=0, timeout_s=4.0, threads=2))
    out = d.cycle()
    assert out["delivered"] == 2 and out["failed"] == 0, out
    assert {r.webhook_id: r.status for r in Deliveries(store).list(limit=10)[0]} == \
        {"a-slow": DELIVERED, "b-fast": DELIVERED}
    d.run(once=True)  # stops its threads


def test_retention_deletes_what_the_outbox_is_done_with_and_nothing_else(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    """After the retention: closed anomalies and fully resolved groups go, with their
    deliveries; an open anomaly, dead deliveries and a group with a receiver still down
    stay, and the deliverer still resolves that group afterwards."""
    migrate(store)
    rx, broken = receiver(), receiver(fail=lambda _n, _r: 500)
    Webhooks(store).put("ops", rx.url, codes=["MISSING_ARCHIVE", "RECEIVER_DOWN"])
    Webhooks(store).put("broken", broken.url, codes=["DUPLICATE_RECEIPT"])
    clock = FakeClock()
    day = 86_400_000
    s = NotifySettings(settle_ms=0, max_attempts=1, retention_ms=day,
                       prune_every_ms=3 * day,
                       group=GroupRule(window_ms=3000, min_size=3, settle_ms=1000))
    d = Deliverer(store, s, clock=clock)
    t0 = clock() - 1000
    closed, still_open = case_anomaly(1), case_anomaly(2)
    dead = case_anomaly(3, code="DUPLICATE_RECEIPT")
    whole = [down(i, "330106", t0 + i * 100) for i in range(3)]  # all come back
    part = [down(i, "330107", t0 + i * 100) for i in range(3)]  # one stays down
    write_feed(store, [closed, still_open, dead, *whole, *part])
    assert d.cycle()["pruned"] == 0  # the first cycle looks: nothing is old enough
    clock.sleep(3100)
    d.cycle()  # the windows close: two groups
    back = clock() - 500
    write_feed(store, [replace(a, resolved_at=back) for a in (closed, dead)], kind="resolved")
    write_feed(store, [replace(a, resolved_at=back) for a in (*whole, *part[:2])],
               kind="resolved")
    d.cycle()
    clock.sleep(5000)
    d.cycle()
    types = Counter(r["body"]["type"] for r in rx.requests)
    assert types == Counter({"anomaly.opened": 2, "anomaly.resolved": 1, "group.opened": 2,
                             "group.resolved": 2})
    assert [r.status for r in Deliveries(store).list("broken", limit=10)[0]] == [DEAD, DEAD]

    def kept() -> Counter[tuple[str, str]]:
        rows = store.query("SELECT kind, anomaly_id FROM alert_notification FINAL")
        return Counter((r["kind"], r["anomaly_id"] if r["anomaly_id"].startswith("case")
                        else r["anomaly_id"].rsplit("-", 1)[0]) for r in rows)

    before = kept()
    clock.sleep(day)
    assert d.outbox.prunable(clock() - day, 100)[0]  # old enough now, but ...
    assert d.cycle()["pruned"] == 0  # ... the last pass was less than prune_every_ms ago
    clock.sleep(2 * day)
    pruned = d.cycle()["pruned"]
    after = kept()
    assert after == Counter({
        ("opened", "case-a2"): 1,  # still open
        ("opened", "case-a3"): 1, ("resolved", "case-a3"): 1,  # its deliveries are dead
        ("opened", "down-330107"): 1,  # still down, and its group with what it resolved
        ("group_opened", ""): 1, ("group_resolved", ""): 1,
    }), after
    assert pruned == sum(before.values()) - sum(after.values()) == 2 + 8 + 4
    ops, _ = Deliveries(store).list("ops", limit=100)
    assert [r.status for r in ops] == [DELIVERED] * 3  # a2's, and 330107's group's
    assert Deliveries(store).list("broken", limit=10)[1] == 2
    # what stayed is all the deliverer needs: the last receiver back closes its group
    write_feed(store, [replace(part[2], resolved_at=clock() - 500)], kind="resolved")
    d.cycle()
    clock.sleep(5000)
    d.cycle()
    res = [r["body"] for r in rx.requests if r["body"]["type"] == "group.resolved"]
    assert len(res) == 3 and res[-1]["group"]["allResolved"]
    assert res[-1]["group"]["stillDown"] == []


def test_retention_deletes_through_the_local_tables_on_a_cluster() -> None:
    """A Distributed table takes no DELETE: on a cluster (docs/cluster.md) the rows go
    from its local tables, ON CLUSTER, as the table's engine names them."""

    class ClusterStore:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def query(self, sql: str, params: dict[str, Any]) -> list[dict[str, str]]:
            assert "system.tables" in sql
            return [{"engine_full": f"Distributed('aw', 'arch', '{params['t']}_local',"
                                    " cityHash64(notification_id))"}]

        def command(self, sql: str, params: dict[str, Any]) -> None:
            self.commands.append(sql.split(" WHERE")[0])

    store = ClusterStore()
    outbox = Outbox(store)  # type: ignore[arg-type]
    outbox.delete(["n1", "n2"])
    outbox.delete(["n3"])
    assert store.commands == [
        "DELETE FROM arch.webhook_delivery_local ON CLUSTER aw",
        "DELETE FROM arch.alert_notification_local ON CLUSTER aw"] * 2


def test_a_failing_retention_pass_does_not_stop_delivery(
        store: Any, receiver: Callable[..., Receiver], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    migrate(store)
    rx = receiver()
    Webhooks(store).put("ops", rx.url)
    write_feed(store, [case_anomaly(50)])

    def refused(*_a: Any) -> Any:
        raise StoreError("DELETE refused")

    monkeypatch.setattr(Outbox, "prunable", lambda *_a: (["x"], False))
    monkeypatch.setattr(Outbox, "delete", refused)
    out = Deliverer(store, NotifySettings(settle_ms=0)).cycle()
    assert out["delivered"] == 1 and out["pruned"] == 0
    assert [r["body"]["alert"]["caseNo"] for r in rx.requests] == ["CASE0050"]


def test_one_deliverer_sends_while_another_stands_by_and_takes_over(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    """Two deliverers on one store (two hosts): one sends, the other stands by until the
    first stops renewing its lease (or releases it), and nothing is sent twice."""
    migrate(store)
    rx = receiver()
    Webhooks(store).put("ops", rx.url)
    clock = FakeClock()
    s = NotifySettings(settle_ms=0, takeover_ms=30_000)
    a = Deliverer(store, s, clock=clock, holder="host-a")
    b = Deliverer(store, s, clock=clock, holder="host-b")
    write_feed(store, [case_anomaly(i) for i in range(60, 63)])
    assert a.cycle()["delivered"] == 3
    assert b.cycle() == dict.fromkeys(COUNT_KEYS, 0) and b.lease.active is False
    write_feed(store, [case_anomaly(63)])
    clock.sleep(29_000)
    assert b.cycle()["delivered"] == 0  # host-a renewed within its lease
    assert a.cycle()["delivered"] == 1
    assert b.lease.read() == ("host-a", clock() + 30_000)
    # host-a stops without a word: after the takeover time host-b sends what came since
    write_feed(store, [case_anomaly(64)])
    clock.sleep(29_999)
    assert b.cycle()["delivered"] == 0
    clock.sleep(1)
    assert b.cycle()["delivered"] == 1 and b.lease.active is True
    assert metrics.WEBHOOK_ACTIVE._value.get() == 1
    write_feed(store, [case_anomaly(65)])
    assert a.cycle()["delivered"] == 0 and a.lease.active is False  # back, and standing by
    b.run(once=True)  # a clean stop releases the lease: host-a takes over at once
    assert a.cycle()["delivered"] == 0 and a.lease.active is True  # host-b had sent 65
    write_feed(store, [case_anomaly(66)])
    assert a.cycle()["delivered"] == 1
    assert sorted(r["body"]["alert"]["caseNo"] for r in rx.requests) == \
        [f"CASE{i:04d}" for i in range(60, 67)]


def test_a_deliverer_whose_lease_went_during_slow_posts_stops_sending(
        store: Any, receiver: Callable[..., Receiver]) -> None:
    migrate(store)
    rx = receiver()
    Webhooks(store).put("ops", rx.url)
    clock = FakeClock()
    s = NotifySettings(settle_ms=0, takeover_ms=30_000)
    poster = HttpPoster()
    b = Deliverer(store, s, clock=clock, holder="host-b")

    def slow(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Any:
        clock.sleep(31_000)  # this POST outlives host-a's lease: host-b takes over
        b.cycle()
        return poster(url, body, headers, timeout)

    a = Deliverer(store, s, clock=clock, post=slow, holder="host-a")
    write_feed(store, [case_anomaly(i) for i in range(70, 75)])
    out = a.cycle()
    assert out["delivered"] == 1 and a.lease.read()[0] == "host-b"  # type: ignore[index]
    keys = rx.keys()
    assert len(keys) == 5 and set(keys.values()) == {1}  # host-b sent the other four
    poster.close()


@contextlib.contextmanager
def serve(store: Any) -> Iterator[str]:
    with serve_app(create_app(Settings(), store=store)) as base:
        yield base


def sse(base: str, token: str, since: int, want: int, extra: str = ""
        ) -> list[dict[str, Any]]:
    return read_events(f"{base}/api/v1/alerts/stream?since={since}{extra}",
                       {"Authorization": f"Bearer {token}"}, lambda evs: len(evs) >= want)


# --------------------------------------------------------------------------- processes

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "archwatch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_killed_and_restarted_notify_loses_nothing_and_repeats_nothing_acknowledged(
        tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    """`archwatch notify` SIGKILLed mid-way and started again: every transition of a real
    replay is delivered; at most the one POST in flight at the kill is sent twice."""
    db = tmp_path / "db"
    r = run_cli("generate", "--out", str(tmp_path / "w"), "--cases", "300", "--anomaly-rate",
                "0.2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    events = tmp_path / "w" / "events.jsonl"
    rx = receiver(delay=0.03)
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps([{"webhookId": "all", "url": rx.url,
                                  "secret": "0123456789abcdef0123"}]))
    # the subscription exists before the transitions happen
    r = run_cli("notify", "--db", str(db), "--once", "--webhooks", str(hooks))
    assert r.returncode == 0, r.stderr
    r = run_cli("replay", str(events), "--db", str(db))
    assert r.returncode == 0, r.stderr
    want = int(run_cli("sql", "SELECT count() FROM (SELECT DISTINCT anomaly_id, kind,"
                       " opened_at, resolved_at, detail FROM anomaly_feed)", "--db", str(db),
                       "--format", "TSV").stdout)
    assert want > 30
    args = ["notify", "--db", str(db), "--notify-interval", "0.1", "--lease", "PT1S",
            "--http-timeout", "0.5"]
    p = subprocess.Popen([sys.executable, "-m", "archwatch", *args], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        poll(lambda: len(rx.requests) >= 10, 60, every=0.01, what="some deliveries")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        at_kill = len(rx.requests)
        assert at_kill < want, "killed too late to test anything"
        p = subprocess.Popen([sys.executable, "-m", "archwatch", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        poll(lambda: len(rx.keys()) >= want, 90, what="every transition delivered")
        time.sleep(2.5)  # past the lease: a resend of the in-flight one would show now
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.stderr.read().decode()[-2000:] if p.stderr else ""
    keys = rx.keys()
    assert len(keys) == want
    assert sum(keys.values()) <= want + 1, keys  # only the POST in flight at the kill
    r = run_cli("sql", "SELECT status, count() FROM webhook_delivery FINAL GROUP BY status",
                "--db", str(db), "--format", "TSV")
    assert r.stdout.split() == ["delivered", str(want)]


@pytest.mark.kafka
def test_silent_receivers_reach_the_webhook_through_archwatch_up(
        broker: str, tmp_path: Path, receiver: Callable[..., Receiver]) -> None:  # noqa: F811
    """Real time, real dataflow: five receivers of one region and one elsewhere go silent;
    the webhook gets one group.opened for the five and one anomaly.opened for the other,
    signed, without any other input arriving."""
    rx = receiver()
    secret = "0123456789abcdef0123"
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps([{"webhookId": "ops", "url": rx.url, "secret": secret,
                                  "codes": ["RECEIVER_DOWN"]}]))
    made = run_cli("users", "create", "city", "--role", "city", "--db", str(tmp_path / "db"))
    mport = free_port()
    password = json.loads(made.stdout)["password"]
    aw = Archwatch(tmp_path, prefix_for("wh"), "--lateness", "PT0S", "--no-recovery",
                   "--epoch-interval", "0.2", "--webhooks", str(hooks), "--group-window",
                   "PT3S", "--notify-interval", "0.2", "--metrics-port", str(mport),
                   command="up").start()
    base = f"http://127.0.0.1:{aw.port}"
    try:
        poll(lambda: _ok(base), 60, what="the API")
        token = httpx.post(f"{base}/api/v1/auth/login", json={
            "username": "city", "password": password}).json()["accessToken"]
        h = {"Authorization": f"Bearer {token}"}
        ids = [("330106", f"r6-{i}") for i in range(5)] + [("330108", "r8-0")]
        keys = {}
        for qym, rid in ids:
            reg = httpx.post(f"{base}/api/v1/receivers", headers=h, json={
                "receiverId": rid, "qym": qym, "period": "PT2S", "grace": "PT1S"}, timeout=10)
            assert reg.status_code == 201, reg.text
            keys[rid] = reg.json()["key"]
        for rid, key in keys.items():
            hb = httpx.post(f"{base}/api/v1/heartbeats/{rid}",
                            headers={"X-Receiver-Key": key}, timeout=10)
            assert hb.status_code == 202
        silent_since = time.time()
        poll(lambda: len(rx.requests) >= 2, 60, every=0.05, what="the webhooks")
        time.sleep(1.0)  # nothing more should come
        types = Counter(r["body"]["type"] for r in rx.requests)
        assert types == Counter({"group.opened": 1, "anomaly.opened": 1}), types
        g = next(r for r in rx.requests if r["body"]["type"] == "group.opened")
        assert sorted(x["receiverId"] for x in g["body"]["group"]["receivers"]) == \
            [f"r6-{i}" for i in range(5)]
        assert verify(secret, g["headers"]["x-archwatch-timestamp"], g["raw"],
                      g["headers"]["x-archwatch-signature"])
        # deadline (3 s) + window (3 s) + settle (2 s) + detection and delivery
        assert g["at"] - silent_since < 12, g["at"] - silent_since
        lone = next(r["body"] for r in rx.requests if r["body"]["type"] == "anomaly.opened")
        assert lone["alert"]["receiverId"] == "r8-0"
        print(f"\ngroup.opened {g['at'] - silent_since:.2f} s after the last heartbeat")
        # they all come back: one grouped resolution, and the lone one's own
        for rid, key in keys.items():
            httpx.post(f"{base}/api/v1/heartbeats/{rid}", headers={"X-Receiver-Key": key},
                       timeout=10)
        poll(lambda: len(rx.requests) >= 4, 60, every=0.05, what="the resolutions")
        time.sleep(1.0)
        types = Counter(r["body"]["type"] for r in rx.requests)
        assert types == Counter({"group.opened": 1, "anomaly.opened": 1, "group.resolved": 1,
                                 "anomaly.resolved": 1}), types
        res = next(r["body"]["group"] for r in rx.requests
                   if r["body"]["type"] == "group.resolved")
        assert res["allResolved"] and res["groupId"] == g["body"]["group"]["groupId"]
        assert len(rx.keys()) == 4 and max(rx.keys().values()) == 1
        m = metrics.scrape(mport)
        assert m['archwatch_webhook_attempts_total{outcome="delivered"}'] == 4, m
    finally:
        assert aw.stop() == 0, aw.log.read_text()[-3000:]


def _ok(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_settings_are_validated_before_anything_starts(tmp_path: Path) -> None:
    from archwatch.config import ConfigError, load

    assert load(None, {"ARCHWATCH_GROUP_WINDOW": "PT10S"})["group_window"] == "PT10S"
    with pytest.raises(ConfigError, match="group_window"):
        load(None, {"ARCHWATCH_GROUP_WINDOW": "ten seconds"})
    bad = tmp_path / "hooks.json"
    bad.write_text(json.dumps([{"webhookId": "x", "url": "ftp://nowhere/"}]))
    r = run_cli("notify", "--db", str(tmp_path / "db"), "--once", "--webhooks", str(bad))
    assert r.returncode == 2 and "archwatch notify:" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("notify", "--once")
    assert r.returncode == 2 and "--db or --url" in r.stderr
    r = run_cli("notify", "--db", str(tmp_path / "db"), "--once", "--takeover", "PT15S")
    assert r.returncode == 2 and "--takeover must exceed" in r.stderr
