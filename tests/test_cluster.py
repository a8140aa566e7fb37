"""The dataflow as a Bytewax cluster of two processes on loopback (`run -i/-a`): exactly
the tables of one process, also across the death and restart of one process.

The processes share the embedded store the way production processes share a ClickHouse
server: `archwatch store-server` owns the chDB directory and every process writes through
clickhouse-connect (`--url`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from archwatch.connectors.kafka import KafkaSettings, create_topics, produce_lines

from archwatch import report, rollup
from archwatch.rules import Sla
from archwatch.store import ServerStore
from archwatch.timeutil import now_ms
from tests.kafka_helpers import (
    ROOT,
    Archwatch,
    all_written,
    free_port,
    metrics,
    outcomes,
    poll,
    positions,
    prefix_for,
)
from tests.test_kafka import (  # noqa: F401
    assert_same,
    broker,
    produce_first_half,
    replay_tables,
    workload,
)

pytestmark = pytest.mark.kafka
PASSWORD = "cluster-test-secret"


class StoreServer:
    """`archwatch store-server` on a free loopback port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://archwatch:{PASSWORD}@127.0.0.1:{self.port}/"
        self.log = tmp / "store-server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archwatch.cli", "store-server", "--db", str(tmp / "db"),
             "--port", str(self.port)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "ARCHWATCH_STORE_PASSWORD": PASSWORD})

        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/ping", timeout=1).is_success
            except httpx.TransportError:
                return False

        poll(up, 60, what="the store server")

    def tables(self) -> dict[str, Any]:
        store = ServerStore(self.url)
        try:
            # kpi_item follows kpi_task within a live sink's refresh interval (1 s)
            poll(lambda: rollup.differences(store) == [], 30, what="kpi_item = sum of partials")
            # written with the anomalies, but by an INSERT of its own: a read between the
            # two sees them apart while the cluster still writes (seen once in a full run)
            poll(lambda: rollup.count_differences(store) == [], 30,
                 what="anomaly_count = the anomalies")
            return report.full(store)
        finally:
            store.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


class Cluster:
    """Two `archwatch run` processes forming one Bytewax cluster."""

    def __init__(self, tmp: Path, prefix: str, url: str, receivers: Path,
                 addresses: str | None = None) -> None:
        self.addresses = addresses or f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
        self.procs = [
            Archwatch(tmp, prefix, "--receivers", str(receivers), "-a", self.addresses,
                      "-i", str(i), "--recovery-dir", str(tmp / "recovery"),
                      "--epoch-interval", "0.5", url=url, name=f"-p{i}")
            for i in range(2)
        ]
        for p in self.procs:
            p.start()

    def totals(self) -> tuple[int, int, int]:
        ms = [metrics(p.port) for p in self.procs]
        read = sum(positions(m) for m in ms)
        start = sum(positions(m, "archwatch_input_start") for m in ms)
        return read, start, sum(outcomes(m) for m in ms)

    def wait_consumed(self, total: int, timeout: float = 240) -> None:
        def done() -> bool:
            for p in self.procs:
                assert p.alive(), p.log.read_text()[-3000:]
            return all_written([metrics(p.port) for p in self.procs], total)

        poll(done, timeout, what=f"{total} records read and their rows written by the cluster")

    def wait_watermark(self, at_ms: int, timeout: float = 60) -> None:
        """As Archwatch.wait_watermark, over the processes (each reports the shards whose
        rows it writes; one that writes none reports nothing)."""
        name = "archwatch_watermark_written_seconds"

        def done() -> bool:
            marks = [m.get(name, 0) for m in (metrics(p.port) for p in self.procs)]
            reported = [v for v in marks if v > 0]
            return bool(reported) and min(reported) >= at_ms / 1000

        poll(done, timeout, what=f"the cluster's watermark written up to {at_ms}")

    def stop(self) -> None:
        for p in self.procs:
            if p.alive():
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            assert p.stop() == 0, p.log.read_text()[-3000:]


def test_two_processes_give_the_tables_of_one(broker: str, workload: Any,  # noqa: F811
                                              tmp_path: Path) -> None:
    out, _truth = workload
    prefix = prefix_for("cluster")
    lines = (out / "events.jsonl").read_text().splitlines()
    create_topics(KafkaSettings(brokers=broker, topic_prefix=prefix), 4)
    produce_lines(lines, KafkaSettings(brokers=broker, topic_prefix=prefix))
    batch = replay_tables(out, tmp_path)
    server = StoreServer(tmp_path)
    try:
        cluster = Cluster(tmp_path, prefix, server.url, out / "receivers.json")
        try:
            cluster.wait_consumed(len([x for x in lines if x.strip()]))
            cluster.wait_watermark(now_ms() - Sla().lateness)
            per_process = [positions(metrics(p.port)) for p in cluster.procs]
            assert all(n > 0 for n in per_process), per_process  # both read partitions
            assert_same(server.tables(), batch)
        finally:
            cluster.stop()
        assert_same(server.tables(), batch)  # and nothing changes at the stop
    finally:
        server.stop()


def test_restart_of_one_process(broker: str, workload: Any, tmp_path: Path) -> None:  # noqa: F811
    out, _truth = workload
    prefix = prefix_for("clusterkill")
    lines, half, ks = produce_first_half(broker, out, prefix, 4)
    batch = replay_tables(out, tmp_path)
    server = StoreServer(tmp_path)
    receivers = out / "receivers.json"
    try:
        first = Cluster(tmp_path, prefix, server.url, receivers)
        poll(lambda: first.totals()[2] > half // 3, 180, what="some events written")
        produce_lines(lines[half:], ks)  # more arrive while it runs ...
        time.sleep(0.3)
        first.procs[1].kill()  # ... and one process dies without a chance to snapshot
        # a Bytewax cluster cannot go on without one of its processes: the other stops too
        poll(lambda: not first.procs[0].alive(), 60, what="the surviving process to stop")
        second = Cluster(tmp_path, prefix, server.url, receivers, first.addresses)
        try:
            second.wait_consumed(len([x for x in lines if x.strip()]))
            second.wait_watermark(now_ms() - Sla().lateness)
            assert_same(server.tables(), batch)
        finally:
            second.stop()
        assert_same(server.tables(), batch)
    finally:
        server.stop()
