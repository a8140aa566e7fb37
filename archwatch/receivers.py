"""Heartbeat gaps of district receiving systems (RECEIVER_DOWN): pure rules.

Everything here is a pure function of a receiver's heartbeats (sorted by (occurredAt,
eventId)), its :class:`Registration` and the watermark; nothing reads a clock, so order
and lateness of delivery cannot change an answer (contract §3).

**Checks.** After a heartbeat at ``t`` the receiver owes its next one at its *k-th
check*: ``t + k * period`` for a period receiver, or the k-th tick of its cron
``schedule`` strictly after ``t`` (in its time zone ``tz``) for a scheduled one. Check
``k`` is missed when no heartbeat arrives by ``check_k + grace`` (healthchecks.io's
"grace" for both kinds: a cron receiver is due at the next tick after its last ping, and
down ``grace`` after that).

**Down** (``downAfter = N``, default 1): while the receiver is up, the heartbeat before a
silence opens a RECEIVER_DOWN at ``check_N + grace`` if no heartbeat came by then and
the watermark has passed it: N consecutive missed checks, not one. With N = 1 and no
schedule this is the contract's ``last heartbeat + period + grace`` exactly.

**Up** (``upAfter = M``, default 1): once down, the receiver is up again at the M-th of M
consecutive heartbeats each on time for the previous one's first check (``check_1 +
grace``, maintenance applied); that heartbeat's ``occurredAt`` is the ``resolvedAt``. A
late heartbeat during recovery starts the count again, and the silence it ends belongs to
the same alert: a flapping receiver (down, up, down, up, each shorter than M checks)
gives one RECEIVER_DOWN, not one per flap. With M = 1 the first heartbeat resolves it,
as the contract says.

**Maintenance windows** (each a cron tick plus a duration, in its own time zone; the
window is ``[tick, tick + duration)``): no RECEIVER_DOWN *opens* inside one. A deadline
that falls inside a window is deferred to the window's end plus ``grace`` (windows that
chain or overlap are followed to the last end), and the alert opens then only if the
receiver is still silent. Why not suppress such a gap entirely: the typical window is a
nightly restart, and the receiver that does not come back from it is exactly what
operations must hear about; suppressing would hide it until the next heartbeat, possibly
never. Why the end plus ``grace`` and not the bare end: a receiver restarted at the end of
its window needs the same tolerance as any other late heartbeat; alerting at the bare end
flashes an alert for every receiver that comes back a few seconds after its window. An
alert already open when a window starts stays open (the receiver *is* down), and a
recovery's missed checks use the same deferred deadlines. Windows that never end (a
chain of more than :data:`MAX_CHAINED_WINDOWS`) suppress the alert.

Only a suffix of the heartbeats is ever re-scanned: a scan starts at a heartbeat where the
receiver is known to be up (:meth:`ReceiverFacts.safe_start`), and what comes before it
cannot change.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from archwatch.rules import Anomaly, anomaly_id
from archwatch.timeutil import TimeFormatError, format_duration, parse_duration

DEFAULT_PERIOD_MS = 60_000
DEFAULT_GRACE_MS = 120_000
DEFAULT_TZ = "Asia/Shanghai"
MAX_CHECKS = 1000  # downAfter / upAfter upper bound
MAX_WINDOWS = 16
MAX_CHAINED_WINDOWS = 64

Beat = tuple[int, str]  # (occurredAt ms, eventId)


# ---------------------------------------------------------------------------
# Registrations


@dataclass(frozen=True, slots=True)
class Window:
    """A recurring maintenance window: ``[tick, tick + duration)`` for each cron tick."""

    cron: str
    duration: int  # ms
    tz: str = DEFAULT_TZ

    def as_json(self) -> dict[str, Any]:
        return {"cron": self.cron, "duration": format_duration(self.duration), "tz": self.tz}


@dataclass(frozen=True, slots=True)
class Registration:
    receiver_id: str
    qym: str
    period: int = DEFAULT_PERIOD_MS
    grace: int = DEFAULT_GRACE_MS
    schedule: str = ""  # a cron expression: replaces `period` when set
    tz: str = DEFAULT_TZ  # the schedule's time zone (IANA)
    maintenance: tuple[Window, ...] = ()
    down_after: int = 0  # consecutive missed checks before down; 0: the global default
    up_after: int = 0  # consecutive good heartbeats before up again; 0: the global default

    def with_defaults(self, down_after: int, up_after: int) -> Registration:
        """This registration with the global flap defaults filled in where it has none."""
        if self.down_after and self.up_after:
            return self
        return replace(self, down_after=self.down_after or down_after,
                       up_after=self.up_after or up_after)


def check_cron(expr: str) -> str:
    """``expr`` normalised, or ValueError saying what is wrong with it. Five fields
    (minute hour day month weekday, as in crontab) or six (seconds first)."""
    text = " ".join(str(expr).split())
    if len(text.split()) not in (5, 6):
        raise ValueError(f"cron expression {expr!r} needs 5 fields (minute hour day month "
                         "weekday) or 6 (seconds first)")
    try:
        next(CronSim(text, datetime(2020, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        raise ValueError(f"cron expression {expr!r}: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron expression {expr!r} never fires") from None
    return text


def check_tz(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows, else ValueError."""
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         f"{DEFAULT_TZ} or Europe/Berlin)") from None
    return name


def check_count(name: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHECKS:
        raise ValueError(f"{name} must be a whole number from 1 to {MAX_CHECKS}")
    return value


def _positive_duration(name: str, text: Any, allow_zero: bool = False) -> int:
    try:
        ms = parse_duration(str(text))
    except TimeFormatError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if ms < 0 or (ms == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'at least zero' if allow_zero else 'positive'}")
    return ms


def parse_window(item: Any, default_tz: str, where: str = "maintenance") -> Window:
    if not isinstance(item, dict) or set(item) - {"cron", "duration", "tz"}:
        raise ValueError(f"{where}: expected an object with cron, duration and optional tz")
    if "cron" not in item or "duration" not in item:
        raise ValueError(f"{where}: cron and duration are required")
    try:
        cron = check_cron(item["cron"])
    except ValueError as exc:
        raise ValueError(f"{where}.cron: {exc}") from None
    try:
        tz = check_tz(item.get("tz") or default_tz)
    except ValueError as exc:
        raise ValueError(f"{where}.tz: {exc}") from None
    return Window(cron, _positive_duration(f"{where}.duration", item["duration"]), tz)


def parse_registration(item: Any) -> Registration:
    """One receiver of a receivers file (or the API's body, same keys): ``receiverId``,
    ``qym``, ``period`` *or* ``schedule`` (+ ``tz``), ``grace``, ``maintenance`` (a list
    of ``{cron, duration, tz}``), ``downAfter``, ``upAfter``. ValueError names the key."""
    if not isinstance(item, dict) or not isinstance(item.get("receiverId"), str):
        raise ValueError("needs a string receiverId")
    schedule = item.get("schedule") or ""
    if schedule and item.get("period"):
        raise ValueError("period or schedule: give one, not both")
    try:
        tz = check_tz(item.get("tz") or DEFAULT_TZ)
    except ValueError as exc:
        raise ValueError(f"tz: {exc}") from None
    if schedule:
        try:
            schedule = check_cron(schedule)
        except ValueError as exc:
            raise ValueError(f"schedule: {exc}") from None
    windows = item.get("maintenance") or []
    if not isinstance(windows, list) or len(windows) > MAX_WINDOWS:
        raise ValueError(f"maintenance: a list of at most {MAX_WINDOWS} windows")
    return Registration(
        item["receiverId"],
        str(item.get("qym", "")),
        _positive_duration("period", item.get("period") or "PT1M"),
        _positive_duration("grace", item.get("grace") or "PT2M", allow_zero=True),
        schedule,
        tz,
        tuple(parse_window(w, tz, f"maintenance[{i}]") for i, w in enumerate(windows)),
        check_count("downAfter", item.get("downAfter")),
        check_count("upAfter", item.get("upAfter")),
    )


def load_registrations(path: str | Path) -> dict[str, Registration]:
    """Read the replay's receivers file: a JSON list of registrations (see
    :func:`parse_registration`)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of receivers")
    regs: dict[str, Registration] = {}
    for i, item in enumerate(data):
        try:
            r = parse_registration(item)
        except ValueError as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from None
        regs[r.receiver_id] = r
    return regs


def windows_to_json(windows: Iterable[Window]) -> str:
    return json.dumps([w.as_json() for w in windows], ensure_ascii=False)


def windows_from_json(text: str, default_tz: str = DEFAULT_TZ) -> tuple[Window, ...]:
    if not text:
        return ()
    return tuple(parse_window(w, default_tz) for w in json.loads(text))


# ---------------------------------------------------------------------------
# Time maths (epoch ms in, epoch ms out)


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _local(ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ms // 1000, _zone(tz)).replace(microsecond=(ms % 1000) * 1000)


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


@lru_cache(maxsize=1 << 16)
def cron_tick(expr: str, tz: str, after: int, k: int = 1) -> int | None:
    """The k-th tick of ``expr`` (in ``tz``) strictly after the instant ``after`` (ms), or
    None if it never comes. Daylight-saving changes follow cronsim (as Debian cron: a
    time skipped by the spring change fires just after it, a repeated one fires once)."""
    it = CronSim(expr, _local(after, tz))
    n = 0
    try:
        while True:
            t = _ms(next(it))
            if t > after:  # cronsim may yield a repeated wall-clock time behind us
                n += 1
                if n == k:
                    return t
    except StopIteration:
        return None


@lru_cache(maxsize=1 << 16)
def _last_tick_at_or_before(expr: str, tz: str, at: int) -> int | None:
    it = CronSim(expr, _local((at // 1000 + 1) * 1000, tz), reverse=True)
    try:
        for _ in range(8):  # past a repeated hour, a few steps back at most
            t = _ms(next(it))
            if t <= at:
                return t
    except StopIteration:
        return None
    return None


def window_end(w: Window, at: int) -> int | None:
    """End of the window of ``w`` that contains the instant ``at``, or None."""
    start = _last_tick_at_or_before(w.cron, w.tz, at)
    if start is None or at >= start + w.duration:
        return None
    return start + w.duration


def in_maintenance(reg: Registration, at: int) -> bool:
    return any(window_end(w, at) is not None for w in reg.maintenance)


def defer(reg: Registration, deadline: int) -> int | None:
    """``deadline`` moved out of the maintenance windows (to a window's end + grace), or
    None if the windows never end."""
    if not reg.maintenance:
        return deadline
    for _ in range(MAX_CHAINED_WINDOWS):
        ends = [e for w in reg.maintenance if (e := window_end(w, deadline)) is not None]
        if not ends:
            return deadline
        deadline = max(ends) + reg.grace
    return None


def check_at(reg: Registration, at: int, k: int = 1) -> int | None:
    """When the k-th check after a heartbeat at ``at`` is due (before grace)."""
    if reg.schedule:
        return cron_tick(reg.schedule, reg.tz, at, k)
    return at + k * reg.period


def deadline(reg: Registration, at: int, k: int = 1) -> int | None:
    """The instant after which the k-th check after a heartbeat at ``at`` is missed:
    ``check_k + grace``, moved out of maintenance windows. None: never."""
    due = check_at(reg, at, k)
    return None if due is None else defer(reg, due + reg.grace)


def alert_after(reg: Registration, at: int) -> int | None:
    """When a receiver up since a heartbeat at ``at`` goes down if nothing else comes."""
    return deadline(reg, at, reg.down_after or 1)


# ---------------------------------------------------------------------------
# Facts and the scan


@dataclass(slots=True)
class ReceiverFacts:
    receiver_id: str
    beats: list[Beat] = field(default_factory=list)  # sorted (at, eventId)
    # derived by `scan`, so that it can restart in the middle: each alert's (owner beat,
    # resolving beat or None), in order, and the first beat whose gap awaits the watermark
    spans: list[tuple[Beat, Beat | None]] = field(default_factory=list)
    pending_from: Beat | None = None

    def add(self, at: int, event_id: str) -> int:
        """Insert a heartbeat; returns the first index whose gap may have changed."""
        item = (at, event_id)
        i = bisect.bisect_left(self.beats, item)
        if i < len(self.beats) and self.beats[i] == item:
            return len(self.beats)
        self.beats.insert(i, item)
        return max(i - 1, 0)

    def pending_index(self) -> int:
        """Index of the first heartbeat whose answer can still change as the watermark
        moves (len(beats) if none)."""
        if self.pending_from is None:
            return len(self.beats)
        return bisect.bisect_left(self.beats, self.pending_from)

    def safe_start(self, i: int) -> int:
        """An index <= i at which the receiver is up (no alert open), so that a scan from
        it in the up state computes exactly what a scan from the start would."""
        if i >= len(self.beats):
            return len(self.beats)
        i = max(i, 0)
        key = self.beats[i]
        j = bisect.bisect_right(self.spans, key, key=lambda s: s[0]) - 1
        if j >= 0:
            owner, until = self.spans[j]
            if until is None or until > key:
                return bisect.bisect_left(self.beats, owner)
        return i

    def forget_open(self) -> None:
        """The receiver left the registry (or was paused): its open alert is withdrawn, so
        a later scan must not find it again through the spans."""
        self.spans = [s for s in self.spans if s[1] is not None]
        self.pending_from = None


@dataclass(frozen=True, slots=True)
class Scan:
    start: int  # heartbeats start.. were re-scanned: their alerts are these
    anomalies: dict[str, Anomaly]
    pending: int | None  # the earliest deadline the watermark has not passed yet


def scan(facts: ReceiverFacts, reg: Registration, wm: int, start: int = 0) -> Scan:
    """RECEIVER_DOWN anomalies owned by heartbeats ``safe_start(start)..`` at watermark
    ``wm`` (deadlines strictly before it fire), and the next pending deadline. Updates
    the derived ``spans``/``pending_from`` of ``facts``. ``reg`` must have its flap counts
    resolved (:meth:`Registration.with_defaults`)."""
    beats = facts.beats
    n = len(beats)
    s = facts.safe_start(min(start, facts.pending_index()))
    down_after, up_after = reg.down_after or 1, reg.up_after or 1
    rid = facts.receiver_id
    out: dict[str, Anomaly] = {}
    spans: list[tuple[Beat, Beat | None]] = []
    pending: int | None = None
    pending_from: Beat | None = None
    owner: Beat | None = None
    opened = 0
    run = 0
    i = s

    def alert(resolved: int | None) -> None:
        assert owner is not None
        aid = anomaly_id("RECEIVER_DOWN", "", "", rid, owner[1])
        out[aid] = Anomaly(aid, "RECEIVER_DOWN", "", "", rid, reg.qym, "", "", "", opened,
                           resolved, owner[1])

    while i < n:
        at = beats[i][0]
        nxt = beats[i + 1][0] if i + 1 < n else None
        if owner is None:  # up: does the silence after this heartbeat open an alert?
            d = deadline(reg, at, down_after)
            if d is None or (nxt is not None and nxt <= d):
                pass
            elif d >= wm:
                pending = d if pending is None else min(pending, d)
                pending_from = pending_from or beats[i]
            else:
                owner, opened, run = beats[i], d, 0
            i += 1
            continue
        run += 1  # down: one more heartbeat of the recovery
        if run >= up_after:
            alert(at)
            spans.append((owner, beats[i]))
            owner = None
            continue  # this heartbeat's own silence is judged in the up state
        d1 = deadline(reg, at, 1)
        if nxt is not None and d1 is not None and nxt > d1:
            run = 0  # a missed check: the recovery starts again
        i += 1
    if owner is not None:
        alert(None)
        spans.append((owner, None))
    if s < n:
        key = beats[s]
        facts.spans = [sp for sp in facts.spans if sp[0] < key] + spans
    facts.pending_from = pending_from
    return Scan(s, out, pending)


def gaps(
    facts: ReceiverFacts, reg: Registration, wm: int, start: int = 0
) -> tuple[dict[str, Anomaly], int | None]:
    """RECEIVER_DOWN anomalies of heartbeats ``start..`` and the next pending deadline."""
    res = scan(facts, reg, wm, start)
    return res.anomalies, res.pending


def gap_ids(facts: ReceiverFacts, start: int) -> set[str]:
    """Ids of every gap that heartbeats ``start..`` could own (to withdraw stale ones)."""
    rid = facts.receiver_id
    return {
        anomaly_id("RECEIVER_DOWN", "", "", rid, eid) for _at, eid in facts.beats[max(start, 0):]
    }
