"""Live, a shard fires a deadline by the wall clock while no watermark comes.

With recovery, Bytewax reads no input while an epoch closes (until every step's snapshot
of it is written), and the wall-clock ticks are items of that input: deadlines waited for
the close. A watermark that follows the wall clock says so (``Watermark.wall``), and a
shard takes it on with the wall clock between ticks: the same deadlines fire, at the same
watermark, as a tick would fire them; nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from archwatch.dataflows.reconcile import (
    NOTIFY_GRACE_MS,
    NOTIFY_REACH_MS,
    _Clock,
    _ShardLogic,
)

from archwatch.engine import (
    CaseShard,
    VersionClock,
    Watermark,
    Write,
    extrapolated,
    passes_at,
)
from archwatch.models import parse_record
from archwatch.rules import Sla
from archwatch.settings import EngineSettings
from tests.conftest import GOLDEN

LINES = (GOLDEN / "on-time" / "events.jsonl").read_text().splitlines()
COMPLETION = parse_record(next(x for x in LINES if '"case.completed"' in x), "t").event
WALL = 1_800_000_000_000  # the wall clock when the watermark below was taken (ms)


def _logic(now: list[int], live: bool = True) -> _ShardLogic:
    return _ShardLogic.builder(
        lambda: CaseShard(4, Sla(), VersionClock(), lambda: now[0], own_time=False),
        wall_ms=(lambda: now[0]) if live else None)(None)


def _rows(out: Any) -> list[tuple[str, dict[str, Any]]]:
    """The rows, without when they were made (versions, the feed's sequence and time)."""
    return [(w.table, {k: v for k, v in w.row.items() if k not in ("version", "seq", "at")})
            for w in out if type(w) is Write]


def test_a_watermark_that_follows_the_wall_clock_moves_on_with_it_within_reach() -> None:
    wm = Watermark(1_000, wall=5_000)
    assert extrapolated(wm, 5_000, 3_000) == 1_000
    assert extrapolated(wm, 6_500, 3_000) == 2_500
    assert extrapolated(wm, 8_001, 3_000) is None  # out of reach: the clock step says
    assert extrapolated(wm, 4_999, 3_000) is None
    assert extrapolated(Watermark(1_000), 5_000, 3_000) is None  # event time, a backlog
    assert passes_at(wm, 1_999) == 6_000  # at 6,000 it stands at 2,000 and fires 1,999
    assert passes_at(Watermark(1_000), 1_999) is None


def test_a_shard_fires_its_deadline_by_the_wall_clock_as_the_tick_would() -> None:
    now = [WALL]
    logic, reference = _logic(now), _logic(now)
    for lg in (logic, reference):
        lg.on_batch([COMPLETION])
    deadline = logic.shard.next_deadline()
    assert deadline is not None
    out, _ = logic.on_batch([Watermark(deadline - 1_000, wall=WALL)])
    assert not _rows(out)  # not due yet
    reference.on_batch([Watermark(deadline - 1_000, wall=WALL)])
    due = WALL + 1_001
    assert logic.notify_at() == datetime.fromtimestamp((due + NOTIFY_GRACE_MS) / 1000, UTC)
    now[0] = due + NOTIFY_GRACE_MS  # no tick came: Bytewax calls on_notify
    fired, _ = logic.on_notify()
    assert _rows(fired)
    # what a tick with the watermark the wall clock has reached by then fires
    ticked, _ = reference.on_batch([Watermark(deadline + 1 + NOTIFY_GRACE_MS)])
    assert _rows(fired) == _rows(ticked)
    assert logic.shard.external_wm == deadline + 1 + NOTIFY_GRACE_MS
    # the next real watermark still counts: the shard keeps following it
    later = Watermark(deadline + 5_000, wall=WALL + 6_000)
    logic.on_batch([later])
    assert logic._live == later


def test_no_firing_by_the_wall_clock_without_a_watermark_that_follows_it() -> None:
    now = [WALL]
    held = _logic(now)  # a backlog holds the watermark: it does not follow the wall clock
    held.on_batch([COMPLETION])
    held.on_batch([Watermark(held.shard.next_deadline() - 1_000)])
    assert held.notify_at() is None
    now[0] = WALL + 10_000
    assert held.on_notify() == ((), _ShardLogic.RETAIN)
    far = _logic(now)  # due beyond reach: the clock step's next watermark decides
    far.on_batch([COMPLETION])
    far.on_batch([Watermark(far.shard.next_deadline() - NOTIFY_REACH_MS - 10, wall=WALL)])
    assert far.notify_at() is None
    replay = _logic(now, live=False)  # a replay: event time only
    replay.on_batch([COMPLETION])
    replay.on_batch([Watermark(replay.shard.next_deadline() - 1_000, wall=WALL)])
    assert replay.notify_at() is None


def test_the_clock_says_when_its_watermark_follows_the_wall_clock() -> None:
    sla = Sla()
    clock = _Clock(EngineSettings(live=True, sla=sla))
    assert clock.on_batch([("tick", WALL)]) == [Watermark(WALL - sla.lateness, wall=WALL)]
    # events timestamped ahead of the wall clock: event time leads, not the wall clock
    ahead = WALL + 60_000
    assert clock.on_batch([("event", ahead), ("tick", WALL + 10)]) == \
        [Watermark(ahead - sla.lateness)]
