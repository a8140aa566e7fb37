"""The clock step's live watermark (dataflows/reconcile._Clock): the contract's rule, and
the hold while a Kafka partition has a backlog. Pure: ticks and progress marks are fed
as the dataflow feeds them, with made-up wall times (a frozen clock)."""

from __future__ import annotations

import pickle

from archwatch.dataflows.reconcile import LIVE_WINDOW_MS, PROGRESS_STALL_MS, _Clock

from archwatch.engine import Progress, Watermark
from archwatch.rules import Sla
from archwatch.settings import EngineSettings

LATE = 300_000  # the default lateness, PT5M
T0 = 1_700_000_000_000  # wall time of the first tick
DAY = 86_400_000


def clock(parts: tuple[str, ...] = ()) -> _Clock:
    return _Clock(EngineSettings(live=True, sla=Sla()), frozenset(parts))


def marks(c: _Clock, *values: tuple[str, object]) -> list[int]:
    return [w.at for w in c.on_batch(list(values))]


def test_without_partitions_the_contract_rule() -> None:
    """No progress marks (not a Kafka source): the later of event time and wall time."""
    c = clock()
    assert Sla().lateness == LATE
    assert marks(c, ("event", T0 - DAY)) == [T0 - DAY - LATE]
    assert marks(c, ("wall", T0)) == [T0 - LATE]
    assert marks(c, ("event", T0 - 2 * DAY)) == []  # never back


def test_a_partition_with_a_backlog_holds_the_watermark_at_what_it_delivered() -> None:
    c = clock(("t/0", "t/1"))
    # before either partition reported: nothing fires, whatever the wall clock says
    assert marks(c, ("wall", T0), ("event", T0 - 30 * DAY)) == []
    # t/0 delivered up to 30 days ago and has more; t/1 is read to its end
    assert marks(c, ("part", Progress("t/0", False, T0 - 30 * DAY)),
                 ("part", Progress("t/1", True, None))) == [T0 - 30 * DAY - LATE]
    # another topic's events, far later, do not move it while t/0 catches up
    assert marks(c, ("event", T0 - DAY), ("wall", T0 + 100)) == []
    assert marks(c, ("part", Progress("t/0", False, T0 - 20 * DAY))) == [T0 - 20 * DAY - LATE]
    # t/0 caught up: the wall clock again
    assert marks(c, ("part", Progress("t/0", True, T0 - 10 * DAY))) == [T0 + 100 - LATE]
    # ... and a new backlog can only hold it where it is, never take it back
    assert marks(c, ("part", Progress("t/1", False, T0 - 40 * DAY)), ("wall", T0 + 200)) == []
    assert c.sent == T0 + 100 - LATE


def test_the_hold_is_measured_how_far_and_how_long() -> None:
    """behind_ms: how far the watermark sent is behind event time and the wall clock;
    held_ms: the wall time it stayed behind (what archwatch_watermark_held_* report)."""
    c = clock(("t/0",))
    assert marks(c, ("wall", T0), ("part", Progress("t/0", True, None))) == [T0 - LATE]
    assert (c.behind_ms, c.held_ms) == (0, 0)
    # a backlog of day-old events: held where it was (it never goes back) as the wall
    # clock goes on
    assert marks(c, ("wall", T0 + 1_000), ("part", Progress("t/0", False, T0 - DAY))) == []
    assert (c.behind_ms, c.held_ms) == (1_000, 0)
    assert marks(c, ("wall", T0 + 3_000)) == []
    assert (c.behind_ms, c.held_ms) == (3_000, 2_000)
    # read to its end: the wall clock again, the hold over
    assert marks(c, ("wall", T0 + 4_000), ("part", Progress("t/0", True, T0))) == [
        T0 + 4_000 - LATE]
    assert (c.behind_ms, c.held_ms) == (0, 3_000)
    assert marks(c, ("wall", T0 + 9_000)) == [T0 + 9_000 - LATE]
    assert (c.behind_ms, c.held_ms) == (0, 3_000)
    # held from the start: as far as the backlog's event time is behind
    c = clock(("t/0",))
    assert marks(c, ("wall", T0), ("part", Progress("t/0", False, T0 - DAY))) == [
        T0 - DAY - LATE]
    assert (c.behind_ms, c.held_ms) == (DAY, 0)
    # without partitions (a replay, or no marks) never held
    r = clock()
    assert marks(r, ("event", T0 - DAY), ("wall", T0)) == [T0 - LATE]
    assert (r.behind_ms, r.held_ms) == (0, 0)


def test_a_backlog_not_yet_read_fires_nothing() -> None:
    c = clock(("t/0",))
    assert marks(c, ("wall", T0), ("part", Progress("t/0", False, None))) == []
    assert marks(c, ("event", T0 - DAY)) == []


def test_a_partition_that_stops_moving_stops_holding() -> None:
    """Liveness (contract §3: deadlines fire while nothing arrives): a partition that
    reports a backlog but delivers nothing from it for PROGRESS_STALL_MS no longer holds
    the watermark; one never heard from, the same time after the first tick."""
    c = clock(("t/0", "t/1"))
    assert marks(c, ("wall", T0), ("part", Progress("t/0", False, T0 - DAY)),
                 ("part", Progress("t/1", True, None))) == [T0 - DAY - LATE]
    later = T0 + PROGRESS_STALL_MS - 1
    assert marks(c, ("wall", later), ("part", Progress("t/0", False, None))) == []
    assert marks(c, ("wall", later + 1)) == [later + 1 - LATE]

    c = clock(("t/0", "t/1"))
    assert marks(c, ("wall", T0), ("part", Progress("t/1", True, None))) == []
    assert marks(c, ("wall", T0 + PROGRESS_STALL_MS - 1)) == []
    assert marks(c, ("wall", T0 + PROGRESS_STALL_MS)) == [T0 + PROGRESS_STALL_MS - LATE]


def test_a_restored_clock_waits_for_the_partitions_again() -> None:
    """After a restart a partition caught up before it may have a backlog: the restored
    clock forgets the progress it heard (and keeps what it sent)."""
    c = clock(("t/0",))
    assert marks(c, ("wall", T0), ("part", Progress("t/0", True, None))) == [T0 - LATE]
    restored = pickle.loads(pickle.dumps(c))
    restored.adopt(clock(("t/0",)))
    assert marks(restored, ("wall", T0 + DAY)) == []
    assert marks(restored, ("part", Progress("t/0", False, T0 + 1000))) == [T0 + 1000 - LATE]
    assert marks(restored, ("part", Progress("t/0", True, None))) == [T0 + DAY - LATE]


def test_replay_emits_only_at_the_end() -> None:
    c = _Clock(EngineSettings(as_of=T0), frozenset(("t/0",)))
    assert c.on_batch([("event", T0 - DAY), ("part", Progress("t/0", False, T0 - DAY))]) == []
    assert c.end() == [Watermark(T0)]


def test_a_partition_with_recent_events_is_live_not_catching_up() -> None:
    """Under steady load a partition is often behind when an epoch ends; its events are
    then seconds old, and holding at them would keep the watermark an epoch behind."""
    c = clock(("t/0",))
    recent = T0 - LIVE_WINDOW_MS
    assert marks(c, ("wall", T0), ("part", Progress("t/0", False, recent))) == [T0 - LATE]
    c = clock(("t/0",))
    older = recent - 1
    assert marks(c, ("wall", T0), ("part", Progress("t/0", False, older))) == [older - LATE]


def test_a_live_partition_stays_live_until_its_next_mark() -> None:
    """A mark stands for an epoch and more (5 s with recovery): a partition whose events
    were recent when its mark came does not start holding the watermark as the wall
    clock moves on, past LIVE_WINDOW_MS, before the next mark; its next mark decides."""
    c = clock(("t/0", "t/1"))
    assert marks(c, ("wall", T0), ("part", Progress("t/0", False, T0 - 100)),
                 ("part", Progress("t/1", True, None))) == [T0 - LATE]
    later = T0 + LIVE_WINDOW_MS + 2_000
    assert marks(c, ("wall", later)) == [later - LATE]  # held at T0 - 100 before
    # the next mark: t/0 delivered nothing newer, and has more: catching up, it holds
    assert marks(c, ("part", Progress("t/0", False, None)), ("wall", later + 100)) == []
    # a later mark with recent events releases it
    assert marks(c, ("part", Progress("t/0", False, later)), ("wall", later + 200)) == [
        later + 200 - LATE]


def test_a_mark_is_judged_by_the_tick_of_its_own_batch() -> None:
    """A batch carries its tick and marks in any order: the mark is judged by the latest
    wall time, whichever came first."""
    c = clock(("t/0",))
    assert marks(c, ("wall", T0)) == []  # not heard from yet
    late = T0 + 60_000  # a round that took a minute (a stalled process, a slow machine)
    top = late - LIVE_WINDOW_MS - 1  # read 5 s behind when the mark came: a backlog
    assert marks(c, ("part", Progress("t/0", False, top)), ("wall", late)) == [top - LATE]


def test_a_mark_is_judged_by_the_wall_clock_when_it_was_taken() -> None:
    """A mark is taken as an epoch ends and reaches the clock a round of the dataflow
    later, with that round's tick: the partition was live if its events were recent
    when the mark was taken, however long the round took."""
    c = clock(("t/0",))
    taken = T0 + 10_000
    arrives = taken + LIVE_WINDOW_MS + 3_000  # a round of 8 s on a loaded machine
    assert marks(c, ("wall", arrives),
                 ("part", Progress("t/0", False, taken - 200, taken))) == [arrives - LATE]
    c = clock(("t/0",))
    behind = taken - LIVE_WINDOW_MS - 1  # 5 s behind already when the epoch ended
    assert marks(c, ("wall", arrives),
                 ("part", Progress("t/0", False, behind, taken))) == [behind - LATE]
