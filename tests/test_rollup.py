"""kpi_item: the sum of kpi_task's partials per item, kept by the sink (archwatch.rollup).

The dataflow tests (golden, Kafka, recovery, cluster) check the same invariant with
``rollup.differences`` after their runs; these pin the edge cases on a real chDB store:
withdrawn partials, concurrent writers, and the migration's backfill.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from archwatch import rollup
from archwatch.engine import VersionClock
from archwatch.migrate import migrate

ITEM = {"year": 2025, "qym": "330102", "dept_code": "D1", "system_code": "S1",
        "task_id": "T1", "system_level": "市"}
CLOCK = VersionClock()


def partial(src: str, kpi: int, deleted: bool = False, **item: Any) -> dict[str, Any]:
    """A kpi_task row of shard ``src`` (the sink's shape)."""
    return {**ITEM, **item, "src": src, "area": "上城区", "dept_name": "D", "system_name": "S",
            "task_code": "TC", "task_name": "事项", "kpi": kpi, "archived": kpi // 2,
            "archived_succ": kpi // 3, "archived_fail": kpi // 4, "cycle_ms_sum": kpi * 1000,
            "last_receive": "2025-03-01 00:00:00.000", "last_update": 1_740_000_000,
            "version": CLOCK.next(), "is_deleted": int(deleted)}


def write(store: Any, rows: list[dict[str, Any]]) -> None:
    store.insert("kpi_task", rows)
    rollup.refresh(store, rows)


def items(store: Any) -> list[dict[str, Any]]:
    return store.query("SELECT task_id, kpi, archived, cycle_ms_sum FROM kpi_item FINAL"
                       " ORDER BY task_id")


def test_item_follows_its_partials_and_disappears_with_the_last(store) -> None:
    migrate(store)
    write(store, [partial("s1", 4), partial("s2", 6)])
    assert items(store) == [{"task_id": "T1", "kpi": 10, "archived": 5, "cycle_ms_sum": 10_000}]
    write(store, [partial("s1", 8)])  # a newer absolute partial replaces the older
    assert items(store) == [{"task_id": "T1", "kpi": 14, "archived": 7, "cycle_ms_sum": 14_000}]
    write(store, [partial("s2", 0, deleted=True)])  # shard s2 withdraws its partial
    assert items(store) == [{"task_id": "T1", "kpi": 8, "archived": 4, "cycle_ms_sum": 8_000}]
    write(store, [partial("s1", 0, deleted=True)])
    assert items(store) == []  # a tombstone, not a stale row or a row of zeros
    assert rollup.differences(store) == []


def test_keys_that_need_escaping_are_recomputed(store) -> None:
    migrate(store)
    odd = {"task_id": "T'1\\x\n", "dept_code": "部门'"}
    write(store, [partial("s1", 3, **odd)])
    assert store.query("SELECT task_id, dept_code, kpi FROM kpi_item FINAL") == [
        {"task_id": odd["task_id"], "dept_code": odd["dept_code"], "kpi": 3}]


def test_concurrent_writers_leave_the_full_sum(store) -> None:
    """Several sinks write partials of the same items at once; whatever the interleaving
    of their writes and recomputes, the newest kpi_item row is the sum of the newest
    partials (see the argument in archwatch.rollup)."""
    migrate(store)
    tasks = [f"T{i}" for i in range(5)]
    final: dict[tuple[str, str], int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sink(src: str, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(12):
                chosen = rnd.sample(tasks, 3)
                rows = []
                for t in chosen:
                    n = rnd.randint(0, 5)
                    rows.append(partial(src, n, deleted=n == 0, task_id=t))
                    with lock:
                        final[(src, t)] = n
                write(store, rows)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sink, args=(f"s{i}", i)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    want = {}
    for (_src, t), n in final.items():
        want[t] = want.get(t, 0) + n
    assert {r["task_id"]: r["kpi"] for r in items(store)} == {t: n for t, n in want.items() if n}
    assert rollup.differences(store) == []


def test_migration_backfills_items_of_an_existing_store(store) -> None:
    """A store that had kpi_task before 0011: the migration sums what it holds."""
    migrate(store)
    store.insert("kpi_task", [partial("s1", 2), partial("s2", 5), partial("s1", 1, task_id="T2"),
                              partial("s3", 0, deleted=True, task_id="T3")])
    store.command("DROP TABLE kpi_item")
    store.command("DELETE FROM schema_migrations WHERE version = 11")
    assert migrate(store) == ["0011_kpi_item.sql"]
    assert [(r["task_id"], r["kpi"]) for r in items(store)] == [("T1", 7), ("T2", 1)]
    assert rollup.differences(store) == []


def test_a_quiet_sink_writes_and_sums_on_time(store) -> None:
    """A partition whose input went quiet (no more batches, no ticks: those reach one
    worker only) still writes its buffer within max_delay and refreshes kpi_item within
    refresh_every, before it is closed."""
    from archwatch.connectors.store_sink import StoreSink, Tally

    from archwatch.engine import Write
    from tests.kafka_helpers import poll

    migrate(store)
    part = StoreSink(store, Tally(), lambda _r: None, max_delay=0.1,
                     refresh_every=0.3).build("s", 0, 1)
    try:
        part.write_batch([Write("kpi_task", partial("s1", 5)), Write("kpi_task", partial("s2", 2))])
        poll(lambda: store.query("SELECT count() AS n FROM kpi_task")[0]["n"] == 2, 10,
             every=0.02, what="the buffered rows written")
        poll(lambda: items(store) and items(store)[0]["kpi"] == 7, 10, every=0.02,
             what="kpi_item refreshed")
    finally:
        part.close()
    assert rollup.differences(store) == []


def test_writes_do_not_wait_for_a_refresh_and_its_failure_surfaces(store, monkeypatch) -> None:
    """Live (refresh_every > 0), kpi_item is refreshed by a thread of its own: a slow
    refresh does not hold back the rows written after it (the anomalies operations staff
    wait for), and a failed one stops the flow at its next write."""
    import pytest
    from archwatch.connectors.store_sink import StoreSink, Tally

    from archwatch.engine import Write
    from tests.kafka_helpers import poll

    migrate(store)
    entered, release = threading.Event(), threading.Event()
    real = rollup.refresh_range

    def slow(*args: Any) -> None:
        entered.set()
        assert release.wait(10)
        real(*args)

    monkeypatch.setattr(rollup, "refresh_range", slow)
    part = StoreSink(store, Tally(), lambda _r: None, max_delay=0.05,
                     refresh_every=0.05).build("s", 0, 1)
    try:
        part.write_batch([Write("kpi_task", partial("s1", 5))])
        poll(entered.is_set, 10, every=0.01, what="a refresh under way")
        part.write_batch([Write("kpi_task", partial("s2", 2, task_id="T2"))])
        poll(lambda: store.query("SELECT count() AS n FROM kpi_task")[0]["n"] == 2, 10,
             every=0.01, what="the next rows written while the refresh is held")
        assert entered.is_set() and not release.is_set()
        release.set()
        poll(lambda: [r["kpi"] for r in items(store)] == [5, 2], 10, every=0.02,
             what="kpi_item refreshed for both")
    finally:
        release.set()
        part.close()
    assert rollup.differences(store) == []

    def broken(*_args: Any) -> None:
        raise RuntimeError("refresh failed")

    monkeypatch.setattr(rollup, "refresh_range", broken)
    part = StoreSink(store, Tally(), lambda _r: None, max_delay=0.05,
                     refresh_every=0.05).build("s", 0, 1)
    part.write_batch([Write("kpi_task", partial("s3", 1, task_id="T3"))])
    writer = part.writer
    poll(lambda: writer.error is not None, 10, every=0.01, what="the refresh to fail")
    with pytest.raises(RuntimeError, match="refresh failed"):
        part.write_batch([Write("kpi_task", partial("s4", 1, task_id="T4"))])
        part.drain()
    part._stop.set()
    writer.queue.put(None)
