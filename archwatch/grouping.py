"""Regional grouping of RECEIVER_DOWN notifications: pure rules, no I/O, frozen-clock tested.

When a whole region's receivers stop at once (a district network outage, a shared
gateway), operations want one alert, not dozens. The rule, per region (qym):

* **Opening.** RECEIVER_DOWN ``opened`` transitions are held. The first held one of a
  region starts a window ``[t0, t0 + window)`` on its ``opened_at`` (the heartbeat deadline
  that passed); every held ``opened`` of that region whose ``opened_at`` falls in the window
  belongs to it. The window is decided once the clock passes ``t0 + window + settle``
  (``settle``: time for the engine's rows of deadlines near the window's end to arrive).
  With at least ``min_size`` members, one ``group_opened`` notification replaces them;
  with fewer, each is released and sent on its own. The next held ``opened`` after the
  window starts the next window. A window of 0 turns grouping off (nothing is held).
* **Resolution.** ``resolved``/``withdrawn``/``updated`` transitions of RECEIVER_DOWN are
  held too. Those of a grouped anomaly are batched the same way per group (window on the
  resolution's time from the first one): one ``group_resolved`` notification per batch,
  listing the receivers back up and those still down (``allResolved`` when none is left).
  An ``updated`` of a grouped anomaly is folded into the group silently. Those of an
  anomaly whose ``opened`` is still held wait for its window; the others are released.
* **Late members.** An ``opened`` that arrives after its window was decided is released
  on its own (the group was already sent); its resolution is then sent on its own too.

Group ids derive from the region and the window start (``group_id``), so a deliverer that
stops between writing a group and marking its members recomputes the same id and does not
announce the group twice.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

OPENED, UPDATED, RESOLVED, WITHDRAWN = "opened", "updated", "resolved", "withdrawn"
GROUP_OPENED, GROUP_RESOLVED = "group_opened", "group_resolved"
GROUPED_CODE = "RECEIVER_DOWN"


@dataclass(frozen=True)
class GroupRule:
    """``window_ms``: how close together openings must be; ``min_size``: fewest receivers
    that make a group; ``settle_ms``: wait past a window's end before deciding it."""

    window_ms: int = 30_000
    min_size: int = 3
    settle_ms: int = 2_000

    @property
    def enabled(self) -> bool:
        return self.window_ms > 0


@dataclass(frozen=True)
class Held:
    """A held RECEIVER_DOWN transition. ``at_ms``: opened_at for ``opened``, resolved_at
    for ``resolved``, the feed time otherwise."""

    notification_id: str
    kind: str
    anomaly_id: str
    receiver_id: str
    qym: str
    at_ms: int


@dataclass(frozen=True)
class Group:
    """A group already announced, with what earlier batches already resolved."""

    group_id: str
    qym: str
    start_ms: int
    members: frozenset[str]  # anomaly ids
    resolved: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NewGroup:
    group_id: str
    qym: str
    start_ms: int
    end_ms: int  # the last member's opened_at
    members: tuple[Held, ...]


@dataclass(frozen=True)
class GroupResolution:
    notification_id: str
    group_id: str
    qym: str
    start_ms: int
    members: tuple[Held, ...]  # transitions resolved (or withdrawn) in this batch
    still_down: tuple[str, ...]  # anomaly ids of the group not resolved yet

    @property
    def all_resolved(self) -> bool:
        return not self.still_down


@dataclass
class Plan:
    """What to do now: send ``release`` one by one, announce ``groups`` and
    ``resolutions``, and mark ``absorbed`` (notification id -> group id) as grouped."""

    release: list[str] = field(default_factory=list)
    groups: list[NewGroup] = field(default_factory=list)
    resolutions: list[GroupResolution] = field(default_factory=list)
    absorbed: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.release or self.groups or self.resolutions or self.absorbed)


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def group_id(qym: str, start_ms: int) -> str:
    return "g-" + _hash(GROUPED_CODE, qym, start_ms)


def resolution_id(gid: str, start_ms: int) -> str:
    return "r-" + _hash(gid, start_ms)


def _windows(items: list[Held], window_ms: int) -> Iterable[list[Held]]:
    """Consecutive windows over items sorted by time: each starts at its first item."""
    i = 0
    while i < len(items):
        t0 = items[i].at_ms
        j = i
        while j < len(items) and items[j].at_ms < t0 + window_ms:
            j += 1
        yield items[i:j]
        i = j


def plan(held: Iterable[Held], groups: Mapping[str, Group], now_ms: int,
         rule: GroupRule) -> Plan:
    """Decide the held transitions whose windows have closed at ``now_ms``.

    ``groups``: every group announced so far, by id. Deterministic: the same held rows,
    groups and time give the same plan (ids included)."""
    out = Plan()
    held = sorted(held, key=lambda h: (h.at_ms, h.notification_id))
    if not rule.enabled:
        out.release = [h.notification_id for h in held]
        return out
    member_of: dict[str, str] = {a: g.group_id for g in groups.values() for a in g.members}
    by_qym: dict[str, list[Held]] = defaultdict(list)
    later: list[Held] = []
    for h in held:
        (by_qym[h.qym] if h.kind == OPENED else later).append(h)
    still_held: set[str] = set()  # anomaly ids whose opening waits
    for qym, opens in by_qym.items():
        for win in _windows(opens, rule.window_ms):
            t0 = win[0].at_ms
            if now_ms < t0 + rule.window_ms + rule.settle_ms:
                still_held.update(h.anomaly_id for h in win)
                continue
            gid = group_id(qym, t0)
            known = groups.get(gid)
            if known is not None:  # announced before a restart: its members join it again
                for h in win:
                    if h.anomaly_id in known.members:
                        out.absorbed[h.notification_id] = gid
                    else:
                        out.release.append(h.notification_id)
                continue
            fresh = [h for h in win if h.anomaly_id not in member_of]
            if len(fresh) >= rule.min_size:
                out.groups.append(NewGroup(gid, qym, t0, fresh[-1].at_ms, tuple(fresh)))
                for h in fresh:
                    member_of[h.anomaly_id] = gid
                    out.absorbed[h.notification_id] = gid
                for h in win:
                    if h.notification_id not in out.absorbed:
                        out.release.append(h.notification_id)
            else:
                out.release.extend(h.notification_id for h in win)
    new_groups = {g.group_id: g for g in out.groups}
    batches: dict[str, list[Held]] = defaultdict(list)
    for h in later:
        gid = member_of.get(h.anomaly_id)
        if gid is None:
            if h.anomaly_id in still_held:
                continue
            out.release.append(h.notification_id)
        elif h.kind == UPDATED:
            out.absorbed[h.notification_id] = gid
        else:
            batches[gid].append(h)
    for gid, items in batches.items():
        g = groups.get(gid)
        if g is not None:
            qym, members, resolved = g.qym, set(g.members), set(g.resolved)
        else:
            ng = new_groups[gid]
            qym, members, resolved = ng.qym, {h.anomaly_id for h in ng.members}, set()
        for win in _windows(items, rule.window_ms):
            t0 = win[0].at_ms
            if now_ms < t0 + rule.window_ms + rule.settle_ms:
                break
            rid = resolution_id(gid, t0)
            done = [h for h in win if h.anomaly_id not in resolved]
            for h in win:
                out.absorbed[h.notification_id] = gid
            if not done:
                continue  # a repeat (e.g. withdrawn after resolved): nothing new to say
            resolved.update(h.anomaly_id for h in done)
            out.resolutions.append(GroupResolution(
                rid, gid, qym, t0, tuple(done), tuple(sorted(members - resolved))))
    return out
