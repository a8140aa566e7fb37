"""The live input's side items (archwatch.live.LiveSide), with a frozen clock: a wall
tick every ``tick``, the registrations only when they change; and the live dataflow has
one input (its partitions' epochs advance together: see archwatch.settings.INPUT_WAKE)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from archwatch.engine import Registrations, WallTick
from archwatch.live import LiveSide


def test_ticks_every_interval_and_registrations_when_they_change() -> None:
    clock = [1_000]
    polls: list[dict | None] = [{"r1": "reg"}, None, None, {"r1": "reg2"}]
    side = LiveSide(lambda: polls.pop(0), timedelta(milliseconds=100), now=lambda: clock[0])
    assert side() == [WallTick(1_000), Registrations({"r1": "reg"})]
    clock[0] += 10  # a wake later: no tick yet, nothing new registered
    assert side() == []
    clock[0] += 90
    assert side() == [WallTick(1_100)]
    clock[0] += 150
    assert side() == [WallTick(1_250), Registrations({"r1": "reg2"})]


def test_the_live_dataflow_has_one_input(tmp_path: Path) -> None:
    from unittest.mock import patch

    from archwatch.connectors.kafka import KafkaSettings
    from archwatch.connectors.store_sink import Tally

    from archwatch.live import LiveOptions, build_live_flow
    from archwatch.migrate import migrate
    from archwatch.settings import EngineSettings
    from archwatch.store import ChdbStore

    store = ChdbStore(tmp_path / "db")
    try:
        migrate(store)
        opts = LiveOptions(kafka=KafkaSettings(brokers="127.0.0.1:1", topic_prefix="t."))
        with patch("archwatch.connectors.kafka.KafkaRecords.progress_parts",
                   return_value=frozenset()):
            flow = build_live_flow(store, EngineSettings(live=True), opts, Tally())
        inputs = [s.step_id for s in flow.substeps if type(s).__name__ == "input"]
        assert inputs == ["archwatch.input"]
    finally:
        store.close()
