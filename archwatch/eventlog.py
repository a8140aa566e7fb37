"""Reading events back from the store's event log (case reload after eviction, the
digests of retired event ids for the dedup step)."""

from __future__ import annotations

from typing import Any

from archwatch.engine import DigestLookup, Loader
from archwatch.models import Envelope, parse_record
from archwatch.store import Store

RECEIVER_TYPES = frozenset({"receiver.heartbeat", "interface.error"})


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
