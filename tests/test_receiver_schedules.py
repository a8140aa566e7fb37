"""Cron schedules, maintenance windows and flap suppression through the real dataflow
(a replay into a chDB store, in order and reversed) and the real API on that store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient

from archwatch.accounts import Accounts, Role
from archwatch.migrate import migrate
from archwatch.receivers import load_registrations
from archwatch.settings import EngineSettings
from archwatch.store import open_store
from archwatch.timeutil import parse_ts, to_iso_utc
from tests.conftest import replay_into

DAY = "2026-03-02T"  # Asia/Shanghai
MIN = 60_000

RECEIVERS = [
    {"receiverId": "maint-ok", "qym": "330101", "period": "PT1M", "grace": "PT2M",
     "maintenance": [{"cron": "0 2 * * *", "duration": "PT2H"}]},
    {"receiverId": "maint-late", "qym": "330102", "period": "PT1M", "grace": "PT2M",
     "maintenance": [{"cron": "0 2 * * *", "duration": "PT2H", "tz": "Asia/Shanghai"}]},
    {"receiverId": "nomaint", "qym": "330103", "period": "PT1M", "grace": "PT2M"},
    {"receiverId": "flappy", "qym": "330104", "period": "PT1M", "grace": "PT1M", "upAfter": 3},
    {"receiverId": "flappy-default", "qym": "330105", "period": "PT1M", "grace": "PT1M"},
    {"receiverId": "cron-recv", "qym": "330106", "schedule": "*/15 * * * *", "grace": "PT5M",
     "tz": "Europe/Berlin"},
    {"receiverId": "cron-berlin", "qym": "330108", "schedule": "0 1 * * *", "grace": "PT10M",
     "tz": "Europe/Berlin"},
]


def at(hhmm: str) -> int:
    return parse_ts(f"{DAY}{hhmm}{':00' if len(hhmm) == 5 else ''}+08:00")


def minutes(a: str, b: str) -> list[int]:
    return list(range(at(a), at(b) + 1, MIN))


BEATS: dict[str, list[int]] = {
    # silent from 01:59 through the 02:00-04:00 window, back at 04:01 (inside grace)
    "maint-ok": minutes("00:00", "01:59") + minutes("04:01", "04:30"),
    # silent through the window and past its end + grace: down at 04:02, not at 02:02
    "maint-late": minutes("00:00", "01:59") + minutes("05:00", "05:30"),
    "nomaint": minutes("00:00", "01:59") + minutes("05:00", "05:30"),
    # down at 00:04, then up, down, up, down, each shorter than 3 checks, up at 00:15
    "flappy": [at(x) for x in ("00:00", "00:01", "00:02", "00:05", "00:06", "00:09", "00:10",
                               "00:13", "00:14")] + minutes("00:15", "00:30"),
    "cron-recv": [at("00:00:20"), at("00:15:20"), at("00:30:20"), at("01:10"),
                  at("01:15:20"), at("01:30:20")],
    "cron-berlin": [at("00:00")],  # 2026-03-01 17:00 CET: due 2026-03-02 01:00 CET
}
BEATS["flappy-default"] = BEATS["flappy"]
AS_OF = "2026-03-02T07:00:00+08:00"

# (receiverId, openedAt, resolvedAt) in UTC: Shanghai minus 8 hours
EXPECTED = sorted([
    ("maint-ok", "2026-03-01T20:33:00Z", None),
    ("maint-late", "2026-03-01T20:02:00Z", "2026-03-01T21:00:00Z"),  # window end + grace
    ("maint-late", "2026-03-01T21:33:00Z", None),
    ("nomaint", "2026-03-01T18:02:00Z", "2026-03-01T21:00:00Z"),
    ("nomaint", "2026-03-01T21:33:00Z", None),
    ("flappy", "2026-03-01T16:04:00Z", "2026-03-01T16:15:00Z"),  # one alert for the flaps
    ("flappy", "2026-03-01T16:32:00Z", None),
    ("flappy-default", "2026-03-01T16:04:00Z", "2026-03-01T16:05:00Z"),
    ("flappy-default", "2026-03-01T16:08:00Z", "2026-03-01T16:09:00Z"),
    ("flappy-default", "2026-03-01T16:12:00Z", "2026-03-01T16:13:00Z"),
    ("flappy-default", "2026-03-01T16:32:00Z", None),
    ("cron-recv", "2026-03-01T16:50:00Z", "2026-03-01T17:10:00Z"),  # 00:45 tick + 5 min
    ("cron-recv", "2026-03-01T17:50:00Z", None),
])


def _events(path: Path, reverse: bool = False) -> Path:
    lines = [json.dumps({"eventId": f"{rid}-{i:03d}", "type": "receiver.heartbeat",
                         "occurredAt": to_iso_utc(t), "source": rid, "receiverId": rid,
                         "qym": next(r["qym"] for r in RECEIVERS if r["receiverId"] == rid)})
             for rid, beats in BEATS.items() for i, t in enumerate(beats)]
    if reverse:
        lines.reverse()
    path.write_text("\n".join(lines) + "\n")
    return path


def _down(report: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    out = []
    for a in report["anomalies"]:
        assert a["code"] == "RECEIVER_DOWN"
        out.append((a["receiverId"], to_iso_utc(parse_ts(a["openedAt"])),
                    a["resolvedAt"] and to_iso_utc(parse_ts(a["resolvedAt"]))))
    return sorted(out, key=lambda x: (x[0], x[1]))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("schedules")
    (root / "receivers.json").write_text(json.dumps(RECEIVERS))
    settings = EngineSettings(as_of=parse_ts(AS_OF),
                              receivers=load_registrations(root / "receivers.json"))
    # the same heartbeats reversed, first (an embedded store is one per process at a time)
    rev = open_store(root / "rev-db")
    try:
        reversed_report = replay_into(rev, [_events(root / "rev.jsonl", reverse=True)],
                                      settings, root)
    finally:
        rev.close()
    store = open_store(root / "db")
    report = replay_into(store, [_events(root / "events.jsonl")], settings, root)
    migrate(store)
    yield store, report, reversed_report
    store.close()


def test_windows_flaps_and_schedules_through_the_dataflow(world: Any) -> None:
    _store, report, _rev = world
    assert _down(report) == sorted(EXPECTED, key=lambda x: (x[0], x[1]))


def test_reversed_delivery_gives_the_same_rows(world: Any) -> None:
    _store, report, reversed_report = world
    assert _down(reversed_report) == _down(report)


@pytest.fixture(scope="module")
def client(world: Any) -> Any:
    store, _report, _rev = world
    app = create_app(Settings(rate_burst=10_000, rate_per_second=10_000), store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        _, password = Accounts(store).create("city-sched", Role.city)
        token = c.post("/api/v1/auth/login", json={"username": "city-sched",
                                                    "password": password}).json()
        c.headers["Authorization"] = f"Bearer {token['accessToken']}"
        yield c


def test_receivers_list_shows_schedule_deadline_and_maintenance(client: Any) -> None:
    rows = {r["receiverId"]: r for r in client.get("/api/v1/receivers").json()}
    berlin = rows["cron-berlin"]
    assert berlin["state"] in ("up", "late") and berlin["schedule"] == "0 1 * * *"
    assert berlin["tz"] == "Europe/Berlin" and berlin["maintenance"] == []
    # 01:00 CET + 10 min, the next tick after its only heartbeat (17:00 CET the day before)
    assert berlin["alertAfter"] == "2026-03-02T00:10:00Z"
    assert rows["maint-late"]["maintenance"] == [
        {"cron": "0 2 * * *", "duration": "PT2H", "tz": "Asia/Shanghai"}]
    assert rows["flappy"]["upAfter"] == 3 and rows["flappy"]["downAfter"] is None
    assert rows["nomaint"]["state"] == "down" and rows["nomaint"]["alertAfter"] is None


BASE = {"receiverId": "api-recv", "qym": "330109"}


@pytest.mark.parametrize("extra, field", [
    ({"schedule": "61 * * * *"}, "schedule"),
    ({"schedule": "0 * * * *", "period": "PT5M"}, "period or schedule"),
    ({"tz": "Asia/Atlantis"}, "tz"),
    ({"grace": "soon"}, "grace"),
    ({"period": "PT0S"}, "period"),
    ({"maintenance": [{"cron": "0 2 * * *", "duration": "PT0S"}]}, "maintenance[0].duration"),
    ({"maintenance": [{"cron": "0 2 * *", "duration": "PT1H"}]}, "maintenance[0].cron"),
    ({"maintenance": [{"cron": "0 2 * * *", "duration": "PT1H", "tz": "X/Y"}]},
     "maintenance[0].tz"),
    ({"downAfter": 0}, "downAfter"),
    ({"upAfter": 5000}, "upAfter"),
])
def test_bad_schedule_zone_or_duration_is_a_clear_422(client: Any, extra: dict,
                                                      field: str) -> None:
    r = client.post("/api/v1/receivers", json={**BASE, **extra})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter" and err["message"].startswith(field), err
    assert "Traceback" not in r.text


def test_register_and_update_a_scheduled_receiver(client: Any) -> None:
    body = {**BASE, "schedule": "*/5 * * * *", "grace": "PT1M", "tz": "Europe/Berlin",
            "maintenance": [{"cron": "* * * * *", "duration": "PT1M"}], "downAfter": 2}
    r = client.post("/api/v1/receivers", json=body)
    assert r.status_code == 201, r.text
    row = next(x for x in client.get("/api/v1/receivers").json()
               if x["receiverId"] == "api-recv")
    assert row["schedule"] == "*/5 * * * *" and row["downAfter"] == 2
    assert row["inMaintenance"] is True  # a window every minute lasting a minute: always
    assert row["maintenance"][0]["tz"] == "Europe/Berlin"  # the receiver's zone by default
    r = client.put("/api/v1/receivers/api-recv", json={**BASE, "maintenance": []})
    assert r.status_code == 200, r.text
    row = next(x for x in client.get("/api/v1/receivers").json()
               if x["receiverId"] == "api-recv")
    assert row["schedule"] is None and row["inMaintenance"] is False and row["period"] == MIN
    bad = client.put("/api/v1/receivers/api-recv", json={**BASE, "tz": "Nowhere"})
    assert bad.status_code == 422
