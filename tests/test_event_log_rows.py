"""The event log holds exactly one row per applied event, its columns taken from the
validated event (entity: the receiver for receiver events, else the case; the instant
normalised to UTC; the raw record as received): the sink builds the rows itself, column
by column, from the events the dedup step applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from archwatch.models import Envelope, parse_record
from archwatch.replay import replay
from tests.conftest import GOLDEN, scenario_settings

RECEIVER_EVENTS = {"receiver.heartbeat", "interface.error"}


def _expected(name: str, settings: Any) -> list[tuple[Any, ...]]:
    """What each applied event of the scenario must leave, from the parser alone (the
    first copy of a duplicate; nothing of rejects or events after --as-of)."""
    rows: dict[str, tuple[Any, ...]] = {}
    for i, raw in enumerate((GOLDEN / name / "events.jsonl").read_text().splitlines()):
        env = parse_record(raw, str(i))
        if type(env) is not Envelope or env.event.eventId in rows:
            continue
        ev = env.event
        if settings.as_of is not None and ev.occurredAt > settings.as_of:
            continue
        entity = ev.receiverId if ev.type in RECEIVER_EVENTS else ev.caseNo
        rows[ev.eventId] = (entity, ev.occurredAt, ev.eventId, ev.type,
                            getattr(ev, "archiveNo", "") or "", ev.source, raw)
    return sorted(rows.values(), key=lambda r: r[2])


@pytest.mark.parametrize("name", ["heartbeats", "duplicates", "edges", "rejects"])
def test_event_log_rows_are_the_applied_events(store, tmp_path: Path, name: str) -> None:
    settings = scenario_settings(name)
    counts = replay([GOLDEN / name / "events.jsonl"], store, settings,
                    tmp_path / "rejects.jsonl", progress=False).report()
    got = [tuple(r.values()) for r in store.query(
        "SELECT entity, toUnixTimestamp64Milli(occurred_at) AS at, event_id, type,"
        " archive_no, source, payload FROM event_log FINAL ORDER BY event_id")]
    want = _expected(name, settings)
    assert got == want
    assert counts["applied"] == len(want)
