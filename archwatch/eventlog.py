"""Reading events back from the store's event log (case reload after eviction, the
digests of retired event ids for the dedup step)."""

from __future__ import annotations

from typing import Any

from archwatch.engine import DigestLookup, Loader
from archwatch.models import Envelope, parse_record
from archwatch.store import Store
from archwatch.timeutil import ch_time

RECEIVER_TYPES = frozenset({"receiver.heartbeat", "interface.error"})


def event_log_columns(envs: list[Envelope]) -> dict[str, list[Any]]:
    """The ``event_log`` rows of these applied events, column by column (what the store
    inserts as JSONCompactColumns): built in the store sink's writer from the events
    themselves, with no row dict per event (an event-log row per event built in the
    dataflow, then carried to the sink beside the event, cost ~5 us of the dataflow
    thread an event and doubled the items of its busiest edges)."""
    fields = [env.event.__dict__ for env in envs]  # a model's fields, without getattr
    types = [f["type"] for f in fields]
    return {
        "entity": [f["receiverId"] if t in RECEIVER_TYPES else f["caseNo"]
                   for f, t in zip(fields, types, strict=True)],
        "occurred_at": [ch_time(f["occurredAt"]) for f in fields],
        "event_id": [f["eventId"] for f in fields],
        "type": types,
        "archive_no": [f.get("archiveNo", "") for f in fields],
        "source": [f["source"] for f in fields],
        "payload": [env.raw for env in envs],
    }


def store_loader(store: Store) -> Loader:
    """A loader for :class:`archwatch.engine.Eviction`: every applied event of the cases."""

    def load(case_nos: list[str]) -> dict[str, list[Any]]:
        rows = store.query(
            "SELECT entity, payload FROM event_log FINAL WHERE entity IN {c:Array(String)}"
            " ORDER BY occurred_at, event_id", {"c": case_nos})
        out: dict[str, list[Any]] = {}
        for r in rows:
            env = parse_record(r["payload"], "event_log")
            if isinstance(env, Envelope) and env.event.type not in RECEIVER_TYPES:
                out.setdefault(r["entity"], []).append(env.event)
        return out

    return load


def store_digests(store: Store) -> DigestLookup:
    """A lookup for :class:`archwatch.engine.Retirement`: the digest of each stored event
    among ``ids`` (served by event_log's projection by event_id, migration 0015)."""

    def lookup(ids: list[str]) -> dict[str, bytes]:
        rows = store.query(
            "SELECT event_id, any(payload) AS payload FROM event_log"
            " WHERE event_id IN {ids:Array(String)} GROUP BY event_id", {"ids": ids})
        out: dict[str, bytes] = {}
        for r in rows:
            env = parse_record(r["payload"], "event_log")
            if isinstance(env, Envelope):
                out[r["event_id"]] = env.digest
        return out

    return lookup
