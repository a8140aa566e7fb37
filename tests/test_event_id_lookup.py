"""Migration 0015's projection p_event_id: the dedup step's lookups of retired event ids
(eventlog.store_digests) give the stored event's digest, on a store filled before the
migration, after new inserts, a replaced row and a merge, and are read through the
projection (sorted by event id) rather than a skip index over every granule (issue #10)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import orjson

from archwatch.eventlog import store_digests
from archwatch.migrate import load_migrations, migrate
from archwatch.models import Envelope, parse_record
from archwatch.store import ChdbStore, open_store


def _event(i: int) -> str:
    return orjson.dumps({
        "eventId": f"ev-{i:06d}", "type": "province.pushed",
        "occurredAt": "2025-03-01T08:00:00Z", "source": "ZJ-PROVINCE",
        # case numbers in another order than event ids (as in a real feed)
        "caseNo": f"HZ2025030100{i * 7_919 % 100_003:06d}", "batchNo": f"B{i}",
        "targetQym": "330101",
    }).decode()


def _row(raw: str) -> dict[str, Any]:
    obj = orjson.loads(raw)
    return {"entity": obj["caseNo"], "occurred_at": "2025-03-01 08:00:00.000",
            "event_id": obj["eventId"], "type": obj["type"], "archive_no": "",
            "source": obj["source"], "payload": raw}


def _digest(raw: str) -> bytes:
    env = parse_record(raw, "test")
    assert isinstance(env, Envelope)
    return env.digest


def _wait_for_mutations(store: ChdbStore) -> None:
    deadline = time.monotonic() + 60
    while store.query("SELECT count() AS n FROM system.mutations WHERE NOT is_done")[0]["n"]:
        assert time.monotonic() < deadline, "MATERIALIZE PROJECTION did not finish"
        time.sleep(0.1)


def test_lookups_by_event_id_through_the_projection(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    assert isinstance(store, ChdbStore)
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        for m in load_migrations():  # a store filled before 0015
            if m.version < 15:
                for stmt in m.statements():
                    store.command(stmt)
        old = [_event(i) for i in range(30_000)]  # several granules: worth a projection
        store.insert("event_log", [_row(r) for r in old])
        migrate(store)
        _wait_for_mutations(store)
        new = [_event(i) for i in range(30_000, 30_100)]
        store.insert("event_log", [_row(r) for r in new])
        lookup = store_digests(store)
        want = {f"ev-{i:06d}": _digest(r) for i, r in enumerate(old + new)}
        ids = ["ev-000007", "ev-029999", "ev-030050", "ev-999999"]  # old, old, new, absent
        assert lookup(ids) == {i: want[i] for i in ids[:3]}

        plan = store.query_text(
            "EXPLAIN projections = 1 SELECT event_id, any(payload) AS payload FROM event_log"
            " WHERE event_id IN {ids:Array(String)} GROUP BY event_id", "TSVRaw",
            {"ids": ids})
        assert "Name: p_event_id" in plan and "will be applied during reading" in plan
        assert "idx_event_id" not in store.query_text("SHOW CREATE TABLE event_log", "TSVRaw")

        # a row written again (at-least-once output) and a merge: one answer, the same
        store.insert("event_log", [_row(old[7])])
        store.command("OPTIMIZE TABLE event_log FINAL")
        assert lookup(ids) == {i: want[i] for i in ids[:3]}
        assert lookup([f"ev-{i:06d}" for i in range(0, 30_100, 7)]) == {
            i: d for i, d in want.items() if int(i[3:]) % 7 == 0}
