"""The live anomaly feed over SSE: transitions in order, withdrawals included, and a
client that reconnects with Last-Event-ID misses nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from archwatch.connectors.store_sink import StoreSink, Tally
from archwatch.dataflows.reconcile import _ShardLogic

from archwatch.accounts import Accounts, Role
from archwatch.engine import CaseShard, VersionClock, Watermark
from archwatch.migrate import migrate
from archwatch.models import parse_record
from archwatch.replay import replay
from archwatch.rules import Sla
from archwatch.timeutil import parse_ts
from tests.conftest import GOLDEN, scenario_settings
from tests.kafka_helpers import serve_app


@pytest.fixture
def server(store: Any, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Any]]:
    migrate(store)
    _, token = Accounts(store).create("ops", Role.system, system_code="SYS-HZ-CG")
    with serve_app(create_app(Settings(), store=store)) as base:
        yield base, {"Authorization": f"Bearer {token}"}, store


def read_events(url: str, headers: dict[str, str], until: Any, timeout: float = 20) -> list:
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in r.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and "id" in current:
                events.append(current)
                current = {}
                if until(events):
                    break
    return events


def test_feed_replays_transitions_and_resumes(server: Any, tmp_path: Path) -> None:
    base, headers, store = server
    # one record per batch: every transient shows, e.g. MISSING fired by a late receipt
    # and withdrawn when the earlier receipt arrives
    replay([GOLDEN / "late-evidence" / "events.jsonl"], store,
           scenario_settings("late-evidence"), tmp_path / "r1.jsonl", progress=False, batch=1)

    def feed_size() -> int:
        return store.query("SELECT count() AS n FROM anomaly_feed "
                           "WHERE system_code = 'SYS-HZ-CG'")[0]["n"]

    total = feed_size()
    assert total > 4
    first = read_events(f"{base}/api/v1/alerts/stream?since=0", headers,
                        lambda ev: len(ev) >= total // 2)
    ids = [e["id"] for e in first]
    assert ids == sorted(ids)
    # disconnected; meanwhile the engine writes more transitions into the same store
    clock = VersionClock()
    logic = _ShardLogic.builder(lambda: CaseShard(4, Sla(), clock, lambda: 0))(None)
    lines = (GOLDEN / "missing-and-late" / "events.jsonl").read_text().splitlines()
    out, _ = logic.on_batch([parse_record(x, "t").event for x in lines[:1]]
                            + [Watermark(parse_ts("2023-01-01T00:00:00Z"))])
    part = StoreSink(store, Tally(), lambda _r: None).build("s", 0, 1)
    part.write_batch(list(out))
    part.close()
    total = feed_size()
    rest = read_events(f"{base}/api/v1/alerts/stream", {**headers, "Last-Event-ID": str(ids[-1])},
                       lambda ev: len(ev) + len(first) >= total)
    assert len(first) + len(rest) == total
    seen = [e["id"] for e in first + rest]
    assert seen == sorted(set(seen))  # in order, nothing twice, nothing missed
    kinds = {e["event"] for e in first + rest}
    assert {"opened", "withdrawn"} <= kinds  # late evidence withdrew what fired early
    assert all(e["data"]["systemCode"] == "SYS-HZ-CG" for e in first + rest)  # scope


def test_feed_requires_a_reader(server: Any) -> None:
    base, _headers, _store = server
    r = httpx.get(f"{base}/api/v1/alerts/stream", timeout=5)
    assert r.status_code == 401
