"""Receivers' cron schedules, maintenance windows and flap suppression: the pure rules of
archwatch/receivers.py with frozen instants (no clock is read), and the shard logic's
order-independence under hypothesis."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archwatch.harness import run_batches
from archwatch.receivers import (
    ReceiverFacts,
    Registration,
    Window,
    alert_after,
    check_at,
    check_cron,
    cron_tick,
    deadline,
    defer,
    in_maintenance,
    parse_registration,
    scan,
)
from archwatch.settings import EngineSettings
from archwatch.timeutil import parse_ts, to_iso_utc

MIN = 60_000
T0 = parse_ts("2026-03-02T08:00:00+08:00")  # a Monday, Asia/Shanghai


def utc(ms: int | None) -> str | None:
    return to_iso_utc(ms)


def facts(*minutes: float, rid: str = "r1") -> ReceiverFacts:
    f = ReceiverFacts(rid)
    for i, m in enumerate(minutes):
        f.add(T0 + round(m * MIN), f"h{i:03d}")
    return f


def alerts(f: ReceiverFacts, reg: Registration, wm: float) -> list[tuple[float, float | None]]:
    """(openedAt, resolvedAt) in minutes after T0, sorted."""
    res = scan(f, reg, T0 + round(wm * MIN))
    return sorted(((a.opened_at - T0) / MIN,
                   None if a.resolved_at is None else (a.resolved_at - T0) / MIN)
                  for a in res.anomalies.values())


# ---------------------------------------------------------------------------
# cron schedules


class TestCronDeadlines:
    def test_next_tick_after_the_heartbeat_plus_grace_shanghai(self) -> None:
        reg = Registration("r1", "330109", grace=5 * MIN, schedule="0 * * * *")
        beat = parse_ts("2026-03-02T08:00:30+08:00")
        assert utc(check_at(reg, beat)) == "2026-03-02T01:00:00Z"  # 09:00 Shanghai
        assert utc(deadline(reg, beat)) == "2026-03-02T01:05:00Z"
        # a heartbeat exactly on a tick is due at the following tick, not at itself
        assert utc(check_at(reg, parse_ts("2026-03-02T09:00:00+08:00"))) == \
            "2026-03-02T02:00:00Z"

    def test_weekday_schedule_skips_the_weekend(self) -> None:
        reg = Registration("r1", "330109", grace=30 * MIN, schedule="0 9 * * 1-5")
        friday = parse_ts("2026-03-06T09:01:00+08:00")
        assert utc(deadline(reg, friday)) == "2026-03-09T01:30:00Z"  # Monday 09:30 +08:00

    def test_europe_berlin_across_both_dst_changes(self) -> None:
        reg = Registration("r1", "330109", grace=0, schedule="0 3 * * *", tz="Europe/Berlin")
        spring = parse_ts("2026-03-28T03:00:10+01:00")
        assert utc(check_at(reg, spring)) == "2026-03-29T01:00:00Z"  # 03:00 CEST, 23 h later
        autumn = parse_ts("2026-10-24T03:00:10+02:00")
        assert utc(check_at(reg, autumn)) == "2026-10-25T02:00:00Z"  # 03:00 CET, 25 h later

    def test_berlin_skipped_and_repeated_times_fire_once(self) -> None:
        reg = Registration("r1", "330109", grace=0, schedule="30 2 * * *", tz="Europe/Berlin")
        # 02:30 does not exist on 2026-03-29: it fires when the clock jumps (03:00 CEST)
        assert utc(check_at(reg, parse_ts("2026-03-28T12:00:00+01:00"))) == \
            "2026-03-29T01:00:00Z"
        # 02:30 happens twice on 2026-10-25: once, at the first (CEST) one ...
        assert utc(check_at(reg, parse_ts("2026-10-24T12:00:00+02:00"))) == \
            "2026-10-25T00:30:00Z"
        # ... and a heartbeat during the repeated hour is due the next day, never behind it
        second = parse_ts("2026-10-25T02:40:00+01:00")
        nxt = check_at(reg, second)
        assert nxt is not None and nxt > second and utc(nxt) == "2026-10-26T01:30:00Z"

    def test_same_wall_clock_schedule_differs_by_zone(self) -> None:
        sh = Registration("r1", "330109", schedule="0 9 * * *")
        be = Registration("r1", "330109", schedule="0 9 * * *", tz="Europe/Berlin")
        beat = parse_ts("2026-07-01T00:00:00Z")
        assert utc(check_at(sh, beat)) == "2026-07-01T01:00:00Z"
        assert utc(check_at(be, beat)) == "2026-07-01T07:00:00Z"

    def test_kth_tick(self) -> None:
        assert cron_tick("*/15 * * * *", "Asia/Shanghai", T0 + 1, 3) == T0 + 45 * MIN

    def test_six_fields_have_seconds_first(self) -> None:
        assert cron_tick("*/5 * * * * *", "Asia/Shanghai", T0 + 1_200) == T0 + 5_000

    def test_scheduled_receiver_gap_opens_at_tick_plus_grace(self) -> None:
        reg = Registration("r1", "330109", grace=10 * MIN, schedule="0 * * * *")
        f = facts(0.5, 60.2, 120.1, 240.3)  # 08:00, 09:00, 10:00, then nothing until 12:00
        # 10:00:06's next tick is 11:00, missed by 11:10; resolved by the 12:00 heartbeat
        assert alerts(f, reg, 300) == [(190.0, 240.3)]
        assert alerts(f, reg, 311) == [(190.0, 240.3), (310.0, None)]


class TestValidation:
    @pytest.mark.parametrize("item, message", [
        ({"schedule": "61 * * * *"}, "schedule: cron expression '61 * * * *'"),
        ({"schedule": "* * *"}, "needs 5 fields"),
        ({"schedule": "0 0 30 2 *"}, "schedule: cron expression"),
        ({"schedule": "0 * * * *", "period": "PT1M"}, "period or schedule: give one, not both"),
        ({"tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
        ({"tz": "../../etc/passwd"}, "unknown time zone"),
        ({"period": "PT0S"}, "period must be positive"),
        ({"grace": "1 hour"}, "grace: not an ISO 8601 duration"),
        ({"maintenance": [{"cron": "0 2 * * *"}]}, "cron and duration are required"),
        ({"maintenance": [{"cron": "0 2 * * *", "duration": "P1M"}]},
         "maintenance[0].duration"),
        ({"maintenance": [{"cron": "0 25 * * *", "duration": "PT1H"}]},
         "maintenance[0].cron"),
        ({"maintenance": [{"cron": "0 2 * * *", "duration": "PT1H", "tz": "Nowhere"}]},
         "maintenance[0].tz"),
        ({"downAfter": 0}, "downAfter must be a whole number from 1"),
        ({"upAfter": "3"}, "upAfter must be a whole number"),
    ])
    def test_bad_registration_names_the_field(self, item: dict, message: str) -> None:
        with pytest.raises(ValueError) as err:
            parse_registration({"receiverId": "r1", "qym": "330109", **item})
        assert message in str(err.value)

    def test_good_registration(self) -> None:
        r = parse_registration({
            "receiverId": "r1", "qym": "330109", "schedule": "0  9 * * 1-5", "grace": "PT30M",
            "tz": "Europe/Berlin", "downAfter": 2, "upAfter": 3,
            "maintenance": [{"cron": "0 2 * * 0", "duration": "PT2H"}]})
        assert r.schedule == "0 9 * * 1-5" and r.grace == 30 * MIN and r.tz == "Europe/Berlin"
        assert r.maintenance == (Window("0 2 * * 0", 2 * 60 * MIN, "Europe/Berlin"),)
        assert (r.down_after, r.up_after) == (2, 3)
        assert check_cron("*/5 * * * * *") == "*/5 * * * * *"


# ---------------------------------------------------------------------------
# maintenance windows


NIGHTLY = Window("0 2 * * *", 2 * 60 * MIN, "Asia/Shanghai")  # 02:00-04:00 Shanghai


class TestMaintenance:
    REG = Registration("r1", "330109", MIN, 2 * MIN, maintenance=(NIGHTLY,))
    NIGHT = parse_ts("2026-03-03T01:59:30+08:00")

    def test_deadline_inside_a_window_moves_to_its_end_plus_grace(self) -> None:
        assert utc(deadline(self.REG, self.NIGHT)) == "2026-03-02T20:02:00Z"  # 04:02 +08:00
        assert in_maintenance(self.REG, parse_ts("2026-03-03T02:00:00+08:00"))
        assert not in_maintenance(self.REG, parse_ts("2026-03-03T04:00:00+08:00"))  # [start, end)
        before = parse_ts("2026-03-03T01:55:00+08:00")  # deadline 01:58: outside, unchanged
        assert deadline(self.REG, before) == before + 3 * MIN

    def test_silent_through_the_window_opens_at_its_end_plus_grace(self) -> None:
        f = ReceiverFacts("r1")
        f.add(self.NIGHT, "h0")
        res = scan(f, self.REG, parse_ts("2026-03-03T05:00:00+08:00"))
        [a] = res.anomalies.values()
        assert utc(a.opened_at) == "2026-03-02T20:02:00Z" and a.resolved_at is None

    def test_back_within_grace_of_the_end_is_no_alert(self) -> None:
        f = ReceiverFacts("r1")
        f.add(self.NIGHT, "h0")
        f.add(parse_ts("2026-03-03T04:01:30+08:00"), "h1")
        assert scan(f, self.REG, parse_ts("2026-03-03T04:02:00+08:00")).anomalies == {}

    def test_pending_deadline_is_the_deferred_one(self) -> None:
        f = ReceiverFacts("r1")
        f.add(self.NIGHT, "h0")
        res = scan(f, self.REG, parse_ts("2026-03-03T03:00:00+08:00"))
        assert res.anomalies == {} and utc(res.pending) == "2026-03-02T20:02:00Z"

    def test_alert_open_before_the_window_stays_open(self) -> None:
        f = ReceiverFacts("r1")
        f.add(parse_ts("2026-03-03T01:00:00+08:00"), "h0")
        [a] = scan(f, self.REG, parse_ts("2026-03-03T03:00:00+08:00")).anomalies.values()
        assert utc(a.opened_at) == "2026-03-02T17:03:00Z" and a.resolved_at is None

    def test_chained_windows_are_followed_and_endless_ones_suppress(self) -> None:
        second = Window("0 4 * * *", 60 * MIN)  # 04:00-05:00, right after the nightly one
        reg = Registration("r1", "330109", MIN, 0, maintenance=(NIGHTLY, second))
        assert utc(deadline(reg, self.NIGHT)) == "2026-03-02T21:00:00Z"  # 05:00 +08:00
        always = Registration("r1", "330109", MIN, 0,
                              maintenance=(Window("* * * * *", MIN),))
        assert defer(always, T0) is None and deadline(always, T0) is None

    def test_window_in_berlin_time_on_the_dst_night(self) -> None:
        win = Window("0 2 * * *", 2 * 60 * MIN, "Europe/Berlin")
        reg = Registration("r1", "330109", MIN, 0, maintenance=(win,))
        # 02:00 does not exist on 2026-03-29: the window starts at 03:00 CEST and lasts 2 h
        beat = parse_ts("2026-03-29T03:30:00+02:00")
        assert utc(deadline(reg, beat)) == "2026-03-29T03:00:00Z"  # 05:00 CEST


# ---------------------------------------------------------------------------
# flap suppression


class TestFlap:
    def test_defaults_are_the_contract_rule(self) -> None:
        reg = Registration("r1", "330109", MIN, 2 * MIN)
        assert alerts(facts(0, 1, 10, 11, 20), reg, 30) == [(4, 10), (14, 20), (23, None)]

    def test_down_after_n_consecutive_missed_checks(self) -> None:
        reg = Registration("r1", "330109", MIN, 2 * MIN, down_after=3)
        # silences of 4 minutes miss 1-2 checks: with N = 3 no alert at all
        assert alerts(facts(0, 4, 8, 12, 16), reg, 21) == []
        # a silence of 6 minutes misses 3 checks: down at check 3 + grace = +5 min
        assert alerts(facts(0, 4, 10), reg, 12) == [(9, 10)]
        assert alert_after(reg, T0) == T0 + 5 * MIN

    def test_flapping_is_one_alert_until_up_for_m_checks(self) -> None:
        reg = Registration("r1", "330109", MIN, 2 * MIN, up_after=3)
        # down at 3; back at 4, 5, then silent to 9 (missed), 10, silent to 14, 15, 16
        beats = (0, 4, 5, 9, 10, 14, 15, 16, 17)
        assert alerts(facts(*beats), reg, 30) == [(3, 16), (20, None)]
        default = Registration("r1", "330109", MIN, 2 * MIN)
        assert len(alerts(facts(*beats), default, 30)) == 4  # one per flap without it

    def test_recovery_not_complete_keeps_it_open(self) -> None:
        reg = Registration("r1", "330109", MIN, 2 * MIN, up_after=3)
        assert alerts(facts(0, 4, 5), reg, 6) == [(3, None)]

    def test_both_together(self) -> None:
        reg = Registration("r1", "330109", MIN, 2 * MIN, down_after=2, up_after=2)
        # 0 -> 5 misses 2 checks (deadline 4); 5, 9 (late: recovery restarts), 10 up
        assert alerts(facts(0, 5, 9, 10, 11), reg, 12) == [(4, 10)]

    def test_incremental_scan_equals_a_fresh_one(self) -> None:
        reg = Registration("r1", "330109", MIN, 2 * MIN, down_after=2, up_after=3)
        rng = random.Random(7)
        times = sorted(rng.sample(range(0, 400), 150))
        fresh = facts(*times)
        want = scan(fresh, reg, T0 + 420 * MIN).anomalies
        inc = ReceiverFacts("r1")
        got: dict = {}
        order = list(enumerate(times))
        rng.shuffle(order)
        wm = T0
        for i, t in order:
            start = inc.add(T0 + t * MIN, f"h{i:03d}")
            wm = max(wm, T0 + (t - 30) * MIN)
            res = scan(inc, reg, wm, start)
            got = {k: v for k, v in got.items()
                   if v.detail not in {eid for _a, eid in inc.beats[res.start:]}}
            got.update(res.anomalies)
        res = scan(inc, reg, T0 + 420 * MIN, inc.pending_index())
        got = {k: v for k, v in got.items()
               if v.detail not in {eid for _a, eid in inc.beats[res.start:]}}
        got.update(res.anomalies)
        assert got == want and len(want) > 3


# ---------------------------------------------------------------------------
# the shard logic: any order of heartbeats gives the same RECEIVER_DOWN rows


def hb(i: int, at_ms: int, rid: str) -> str:
    return json.dumps({"eventId": f"{rid}-{i:04d}", "type": "receiver.heartbeat",
                       "occurredAt": to_iso_utc(at_ms), "source": rid, "receiverId": rid,
                       "qym": "330109"})


REGS = {
    "plain": Registration("plain", "330109", MIN, 2 * MIN),
    "cron": Registration("cron", "330110", schedule="*/5 * * * *", grace=MIN,
                         tz="Europe/Berlin"),
    "flappy": Registration("flappy", "330111", MIN, MIN, down_after=2, up_after=3),
    "maint": Registration("maint", "330112", MIN, MIN, up_after=2,
                          maintenance=(Window("*/30 * * * *", 10 * MIN),)),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_of_heartbeats_same_receiver_down_rows(data: st.DataObject) -> None:
    """Random heartbeat trains (steady runs, flaps, long silences) for receivers with a
    period, a cron schedule in a DST zone, flap counts and maintenance windows: delivered
    in any order and batching, with the global defaults set too, the tables equal the
    in-order delivery's."""
    lines: list[str] = []
    for rid in REGS:
        gaps = data.draw(st.lists(st.sampled_from([0.5, 1, 1, 2, 3, 4, 6, 9, 17, 31]),
                                  min_size=1, max_size=40), label=rid)
        t = parse_ts("2026-03-29T00:40:00+01:00")  # Berlin's spring change inside
        for i, g in enumerate(gaps):
            t += round(g * MIN)
            lines.append(hb(i, t, rid))
    s = EngineSettings(receivers=REGS, shards=3, down_after=1, up_after=2,
                       as_of=max(parse_ts(json.loads(x)["occurredAt"]) for x in lines) + 45 * MIN)
    reference = run_batches(s, [sorted(lines)]).tables
    order = data.draw(st.permutations(lines))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(lines)), max_size=6))))
    batches = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    got = run_batches(s, [b for b in batches if b]).tables
    assert got.final("anomaly") == reference.final("anomaly")
    assert got.final("receiver_status") == reference.final("receiver_status")


CRON_ATOMS = st.sampled_from(["*", "0", "59", "60", "*/0", "*/7", "1-5", "5-1", "L", "LW",
                              "MON", "FRI#2", "1#6", "?", ",", "-", "/", "99999999999", "15W",
                              "JAN-DEC", "0,30", "3L", "ÿ", ""])


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(CRON_ATOMS, min_size=0, max_size=7),
       tz=st.one_of(st.text(max_size=20), st.sampled_from(["UTC", "Europe/Berlin", "x/../y"])))
def test_any_schedule_or_zone_is_accepted_or_a_clear_value_error(fields: list[str],
                                                                   tz: str) -> None:
    """Whatever a client sends, the verdict is a registration or a ValueError (the API's
    422), never another exception (a 500); an accepted schedule always has a next tick."""
    try:
        r = parse_registration({"receiverId": "r", "qym": "330109",
                                "schedule": " ".join(fields), "tz": tz or "UTC"})
    except ValueError as exc:
        assert str(exc)
        return
    if r.schedule:
        assert check_at(r, T0) is not None and check_at(r, T0) > T0


def contract_gaps(beats: list[tuple[int, str]], period: int, grace: int,
                  wm: int) -> set[tuple[str, int, int | None]]:
    """The contract's rule, written out plainly: heartbeat i's gap opens at
    ``at_i + period + grace`` if the watermark passed it and the next heartbeat is later,
    and resolves at that next heartbeat."""
    out = set()
    for i, (at, eid) in enumerate(beats):
        d = at + period + grace
        nxt = beats[i + 1][0] if i + 1 < len(beats) else None
        if d < wm and (nxt is None or nxt > d):
            out.add((eid, d, nxt))
    return out


@settings(max_examples=300, deadline=None)
@given(times=st.lists(st.integers(0, 600), min_size=1, max_size=60, unique=True),
       wm=st.integers(0, 700), period=st.integers(1, 5), grace=st.integers(0, 5))
def test_defaults_are_exactly_the_contract(times: list[int], wm: int, period: int,
                                           grace: int) -> None:
    reg = Registration("r1", "330109", period * MIN, grace * MIN).with_defaults(1, 1)
    f = facts(*times)
    got = {(a.detail, a.opened_at, a.resolved_at)
           for a in scan(f, reg, T0 + wm * MIN).anomalies.values()}
    assert got == contract_gaps(f.beats, period * MIN, grace * MIN, T0 + wm * MIN)


def test_a_registration_applies_to_gaps_that_open_after_it() -> None:
    """Contract §4: registering (or un-pausing) a silent receiver does not open a gap whose
    deadline passed before; one still ahead opens on time. Pausing withdraws an open one."""
    from archwatch.engine import ReceiverShard, Registrations, VersionClock, Watermark
    from archwatch.models import ReceiverHeartbeat
    from archwatch.rules import Sla

    def beat(rid: str, at: int) -> ReceiverHeartbeat:
        return ReceiverHeartbeat.model_construct(
            eventId=f"{rid}-{at}", type="receiver.heartbeat", occurredAt=at, source=rid,
            receiverId=rid, qym="330109")

    def opened(out: list) -> list[tuple[str, int, int]]:
        return [(w.row["receiver_id"], w.row["is_deleted"], w.row["opened_at"])
                for w in out if w.table == "anomaly"]

    sh = ReceiverShard(1, Sla(), VersionClock(), {})
    sh.on_batch([beat("old", T0), beat("new", T0 + 9 * MIN), Watermark(T0 + 10 * MIN)])
    regs = {r: Registration(r, "330109", MIN, 2 * MIN) for r in ("old", "new")}
    assert opened(sh.on_batch([Registrations(regs)])) == []  # old's deadline T0+3 passed
    out = sh.on_batch([Watermark(T0 + 12 * MIN + 1)])  # new's deadline T0+12 was ahead
    assert [(r, d) for r, d, _o in opened(out)] == [("new", 0)]
    # paused: its open gap is withdrawn; un-paused while still silent: nothing reopens
    out = sh.on_batch([Registrations({"old": regs["old"]})])
    assert [(r, d) for r, d, _o in opened(out)] == [("new", 1)]
    assert opened(sh.on_batch([Registrations(regs), Watermark(T0 + 20 * MIN)])) == []
    # ... until it beats and falls silent again (the heartbeat also re-judges the silence
    # before it under the registration now in force, as a late heartbeat would)
    out = sh.on_batch([beat("new", T0 + 21 * MIN), Watermark(T0 + 30 * MIN)])
    assert ("new", 0, f"{(T0 + 24 * MIN) // 1000}.000") in opened(out)
