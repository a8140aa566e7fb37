"""District receivers live: registry and HTTP heartbeats through the API, the same
dataflow as Kafka heartbeats, RECEIVER_DOWN on the wall clock while nothing arrives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from archwatch.timeutil import now_ms, parse_ts
from tests.kafka_helpers import ROOT, Archwatch, poll, prefix_for
from tests.test_kafka import broker  # noqa: F401 - the session's real broker

pytestmark = pytest.mark.kafka


def api(aw: Archwatch, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, f"http://127.0.0.1:{aw.port}{path}", headers=headers,
                         timeout=10, **kw)


def test_silent_receiver_goes_down_on_the_wall_clock_and_recovers(
        broker: str, tmp_path: Path) -> None:  # noqa: F811
    made = subprocess.run(
        [sys.executable, "-m", "archwatch.cli", "users", "create", "city", "--role", "city",
         "--db", str(tmp_path / "db")], capture_output=True, text=True, check=True, cwd=ROOT)
    password = json.loads(made.stdout)["password"]
    aw = Archwatch(tmp_path, prefix_for("hb"), "--lateness", "PT0S", "--no-recovery",
                   command="up").start()  # default epoch interval (1 s)
    try:
        poll(lambda: _ok(aw, "/healthz"), 60, what="the API")
        token = api(aw, "POST", "/api/v1/auth/login",
                    json={"username": "city", "password": password}).json()["accessToken"]
        reg = api(aw, "POST", "/api/v1/receivers", token, json={
            "receiverId": "recv-330109", "qym": "330109", "owner": "萧山区档案馆 值班电话",
            "period": "PT2S", "grace": "PT1S"})
        assert reg.status_code == 201, reg.text
        key = reg.json()["key"]
        bad = api(aw, "POST", "/api/v1/heartbeats/recv-330109", headers={"X-Receiver-Key": "x"})
        assert bad.status_code == 401
        for _ in range(3):
            hb = api(aw, "POST", "/api/v1/heartbeats/recv-330109",
                     headers={"X-Receiver-Key": key}, json={"status": "ok", "version": "2.3"})
            assert hb.status_code == 202, hb.text
        last_beat = parse_ts(hb.json()["occurredAt"])
        deadline = last_beat + 3000
        states = poll(lambda: _receiver(aw, token), 20, what="the receiver listed")
        assert states["registered"] and states["state"] in ("up", "late")
        url = "/api/v1/anomalies?code=RECEIVER_DOWN&receiverId=recv-330109&status=open"
        poll(lambda: api(aw, "GET", url, token).json()["total"] == 1, 30, every=0.05,
             what="RECEIVER_DOWN")
        seen = now_ms()
        # issue #6: within 1 s of the deadline on the wall clock, with nothing else arriving
        # (measured 70-280 ms here, polled every 50 ms through the API, 4 other test runs
        # beside it)
        assert deadline < seen <= deadline + 1000, f"{seen - deadline} ms after the deadline"
        down = api(aw, "GET", url, token).json()["items"][0]
        assert down["qym"] == "330109" and parse_ts(down["openedAt"]) == deadline
        assert _receiver(aw, token)["state"] == "down"
        # the next heartbeat resolves it
        api(aw, "POST", "/api/v1/heartbeats/recv-330109", headers={"X-Receiver-Key": key})
        poll(lambda: api(aw, "GET", url, token).json()["total"] == 0, 30, every=0.05,
             what="the gap resolved")
        uptime = api(aw, "GET", "/api/v1/receivers/recv-330109/uptime", token).json()
        assert len(uptime["down"]) == 1 and not uptime["down"][0]["open"]
        assert 0 < uptime["days"][-1]["availability"] < 1
        # paused: silence raises nothing
        api(aw, "PUT", "/api/v1/receivers/recv-330109", token, json={
            "receiverId": "recv-330109", "qym": "330109", "period": "PT2S", "grace": "PT1S",
            "paused": True})
        assert poll(lambda: _receiver(aw, token)["state"] == "paused", 10, what="paused")
    finally:
        assert aw.stop() == 0, aw.log.read_text()[-3000:]


def _ok(aw: Archwatch, path: str) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{aw.port}{path}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _receiver(aw: Archwatch, token: str) -> dict[str, Any] | None:
    rows = api(aw, "GET", "/api/v1/receivers", token).json()
    return next((r for r in rows if r["receiverId"] == "recv-330109" and r["lastBeatAt"]), None)


def test_schedule_window_and_flaps_live(broker: str, tmp_path: Path) -> None:  # noqa: F811
    """Through `archwatch up` on the wall clock: a receiver silent inside its maintenance
    window alerts only at the window's end + grace (its twin without a window alerts at
    its deadline); a cron-scheduled one alerts at its next tick + grace; a flapping one
    with upAfter=3 gives one alert where the default would give two."""
    from datetime import datetime

    from archwatch.receivers import cron_tick
    from archwatch.timeutil import SHANGHAI

    made = subprocess.run(
        [sys.executable, "-m", "archwatch.cli", "users", "create", "city", "--role", "city",
         "--db", str(tmp_path / "db")], capture_output=True, text=True, check=True, cwd=ROOT)
    password = json.loads(made.stdout)["password"]
    aw = Archwatch(tmp_path, prefix_for("hbsched"), "--lateness", "PT0S", "--no-recovery",
                   "--epoch-interval", "0.2", command="up").start()
    try:
        poll(lambda: _ok(aw, "/healthz"), 60, what="the API")
        token = api(aw, "POST", "/api/v1/auth/login",
                    json={"username": "city", "password": password}).json()["accessToken"]
        # a window opening in 4 s for 8 s (6-field cron: second minute hour, Shanghai)
        w0 = (now_ms() // 1000 + 4) * 1000
        start = datetime.fromtimestamp(w0 / 1000, SHANGHAI)
        window = {"cron": f"{start.second} {start.minute} {start.hour} * * *",
                  "duration": "PT8S"}
        keys = {}
        for rid, extra in (
                ("s-maint", {"period": "PT1S", "grace": "PT1S", "maintenance": [window]}),
                ("s-ctl", {"period": "PT1S", "grace": "PT1S"}),
                ("s-cron", {"schedule": "*/4 * * * * *", "grace": "PT1S"}),
                ("s-flap", {"period": "PT1S", "grace": "PT1S", "upAfter": 3})):
            r = api(aw, "POST", "/api/v1/receivers", token,
                    json={"receiverId": rid, "qym": "330109", **extra})
            assert r.status_code == 201, r.text
            keys[rid] = r.json()["key"]

        def beat(rid: str) -> int:
            r = api(aw, "POST", f"/api/v1/heartbeats/{rid}",
                    headers={"X-Receiver-Key": keys[rid]})
            assert r.status_code == 202, r.text
            return parse_ts(r.json()["occurredAt"])

        def downs(rid: str) -> list[dict[str, Any]]:
            return api(aw, "GET", f"/api/v1/anomalies?code=RECEIVER_DOWN&receiverId={rid}",
                       token).json()["items"]

        poll(lambda: now_ms() >= w0 - 1500, 10, every=0.02, what="just before the window")
        b_maint, b_ctl, b_cron = beat("s-maint"), beat("s-ctl"), beat("s-cron")
        assert w0 <= b_maint + 2000 < w0 + 8000  # its deadline falls inside the window
        cron_deadline = cron_tick("*/4 * * * * *", "Asia/Shanghai", b_cron) + 1000
        # the control receiver goes down at its deadline, inside the other's window
        [ctl] = poll(lambda: downs("s-ctl"), 20, every=0.05, what="s-ctl down")
        assert parse_ts(ctl["openedAt"]) == b_ctl + 2000
        assert downs("s-maint") == []
        rows = {r["receiverId"]: r for r in api(aw, "GET", "/api/v1/receivers", token).json()}
        assert rows["s-maint"]["inMaintenance"] and not rows["s-ctl"]["inMaintenance"]
        # the scheduled one, at its next 4-second tick + 1 s grace
        [cron] = poll(lambda: downs("s-cron"), 20, every=0.05, what="s-cron down")
        seen = now_ms()
        assert parse_ts(cron["openedAt"]) == cron_deadline
        assert cron_deadline < seen <= cron_deadline + 3000, seen - cron_deadline
        # the windowed one only at the window's end + grace, still silent
        [maint] = poll(lambda: downs("s-maint"), 30, every=0.05, what="s-maint down")
        seen = now_ms()
        assert parse_ts(maint["openedAt"]) == w0 + 8000 + 1000
        assert w0 + 9000 < seen <= w0 + 9000 + 3000, seen - w0 - 9000

        # flapping: down, up for 2 heartbeats, down (a missed check), up for 3
        f0 = beat("s-flap")
        poll(lambda: downs("s-flap"), 20, every=0.05, what="s-flap down")
        beat("s-flap")
        f2 = beat("s-flap")
        poll(lambda: now_ms() > f2 + 2300, 10, every=0.05, what="a missed check")
        good = [beat("s-flap") for _ in range(3)]
        assert good[-1] - good[0] < 2000, "the three heartbeats must be on time"
        poll(lambda: any(a["resolvedAt"] for a in downs("s-flap")), 20, every=0.05,
             what="s-flap resolved")
        before_silence = [a for a in downs("s-flap")
                          if parse_ts(a["openedAt"]) < good[-1] + 2000]
        assert len(before_silence) == 1, before_silence
        assert parse_ts(before_silence[0]["openedAt"]) == f0 + 2000
        assert parse_ts(before_silence[0]["resolvedAt"]) == good[-1]
    finally:
        assert aw.stop() == 0, aw.log.read_text()[-3000:]
