"""Heartbeat gaps of district receiving systems (RECEIVER_DOWN): pure rules.

A gap belongs to the heartbeat before it: with heartbeats sorted by (occurredAt,
eventId), heartbeat *i* has the deadline ``at_i + period + grace``; the gap exists once
the watermark passes that deadline and the next heartbeat (if any) is later than it,
and it resolves at that next heartbeat. Inserting a heartbeat only changes the gaps of
its neighbours, and advancing the watermark only the gaps whose deadline was not yet
passed, so the engine re-evaluates a suffix, never the whole history.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

from archwatch.rules import Anomaly, anomaly_id
from archwatch.timeutil import parse_duration

DEFAULT_PERIOD_MS = 60_000
DEFAULT_GRACE_MS = 120_000


@dataclass(frozen=True, slots=True)
class Registration:
    receiver_id: str
    qym: str
    period: int = DEFAULT_PERIOD_MS
    grace: int = DEFAULT_GRACE_MS


def load_registrations(path: str | Path) -> dict[str, Registration]:
    """Read the replay's receivers file: a JSON list of {receiverId, qym, period, grace}."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of receivers")
    regs: dict[str, Registration] = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("receiverId"), str):
            raise ValueError(f"{path}: entry {i} needs a string receiverId")
        regs[item["receiverId"]] = Registration(
            item["receiverId"],
            str(item.get("qym", "")),
            parse_duration(item.get("period") or "PT1M"),
            parse_duration(item.get("grace") or "PT2M"),
        )
    return regs


@dataclass(slots=True)
class ReceiverFacts:
    receiver_id: str
    beats: list[tuple[int, str]] = field(default_factory=list)  # sorted (at, eventId)

    def add(self, at: int, event_id: str) -> int:
        """Insert a heartbeat; returns the first index whose gap may have changed."""
        item = (at, event_id)
        i = bisect.bisect_left(self.beats, item)
        if i < len(self.beats) and self.beats[i] == item:
            return len(self.beats)
        self.beats.insert(i, item)
        return max(i - 1, 0)

    def first_unsettled(self, wm: int, reg: Registration) -> int:
        """Index of the first heartbeat whose gap can still change as the watermark moves."""
        return bisect.bisect_left(self.beats, (wm - reg.period - reg.grace, ""))


def gaps(
    facts: ReceiverFacts, reg: Registration, wm: int, start: int = 0
) -> tuple[dict[str, Anomaly], int | None]:
    """RECEIVER_DOWN anomalies of heartbeats ``start..`` and the next pending deadline."""
    out: dict[str, Anomaly] = {}
    pending: int | None = None
    beats = facts.beats
    rid = facts.receiver_id
    for i in range(max(start, 0), len(beats)):
        at, eid = beats[i]
        deadline = at + reg.period + reg.grace
        nxt = beats[i + 1][0] if i + 1 < len(beats) else None
        if nxt is not None and nxt <= deadline:
            continue
        if deadline >= wm:
            pending = deadline if pending is None else min(pending, deadline)
            continue
        aid = anomaly_id("RECEIVER_DOWN", "", "", rid, eid)
        out[aid] = Anomaly(
            aid, "RECEIVER_DOWN", "", "", rid, reg.qym, "", "", "", deadline, nxt, eid
        )
    return out, pending


def gap_ids(facts: ReceiverFacts, start: int) -> set[str]:
    """Ids of every gap that heartbeats ``start..`` could own (to withdraw stale ones)."""
    rid = facts.receiver_id
    return {
        anomaly_id("RECEIVER_DOWN", "", "", rid, eid) for _at, eid in facts.beats[max(start, 0):]
    }
