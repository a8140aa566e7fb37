"""The live pipeline against a real Kafka broker (scripts/kafka.sh), no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from archwatch.connectors.kafka import KafkaSettings, create_topics, produce_lines, read_topic

from archwatch import report, rollup
from archwatch.generate import GenerateOptions, generate
from archwatch.receivers import load_registrations
from archwatch.replay import replay
from archwatch.rules import Sla
from archwatch.settings import EngineSettings
from archwatch.store import open_store
from archwatch.timeutil import now_ms
from tests.conftest import comparable_anomalies
from tests.kafka_helpers import (
    BROKERS,
    ROOT,
    Archwatch,
    count_lines,
    delete_session_topics,
    poll,
    prefix_for,
)

pytestmark = pytest.mark.kafka

LATENESS_MS = Sla().lateness  # the runs here keep the default


@pytest.fixture(scope="session")
def broker() -> Any:
    """The real single-node broker of scripts/kafka.sh (fetched from Maven Central once);
    stopped again at the end if this session started it. The topics of the session's
    prefixes (``prefix_for``) are deleted at its end."""
    script = str(ROOT / "scripts" / "kafka.sh")
    was_running = subprocess.run([script, "status"], capture_output=True).returncode == 0
    subprocess.run([script, "start"], check=True, timeout=600)
    yield BROKERS
    delete_session_topics()
    if not was_running:
        subprocess.run([script, "stop"], check=False, timeout=120)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("kw")
    truth = generate(out, GenerateOptions(cases=1500, seed=23, anomaly_rate=0.3,
                                          heartbeat_hours=1))
    return out, truth


def replay_tables(out: Path, tmp: Path) -> dict[str, Any]:
    """The same events through `archwatch replay`, described at a moment past every
    deadline (the live watermark follows today's wall clock)."""
    store = open_store(tmp / "replay-db")
    s = EngineSettings(as_of=now_ms(), receivers=load_registrations(out / "receivers.json"))
    res = replay([out / "events.jsonl"], store, s, tmp / "replay-rejects.jsonl", progress=False)
    tables = report.full(store, res.report())
    store.close()
    return tables


def live_tables(db: Path) -> dict[str, Any]:
    store = open_store(db)
    assert rollup.differences(store) == []  # kpi_item is the sum of kpi_task's partials
    assert rollup.count_differences(store) == []  # anomaly_count counts the anomalies
    tables = report.full(store)
    store.close()
    return tables


def feed_kinds(db: Path) -> dict[str, int]:
    """How many transitions of each kind (opened, updated, resolved, withdrawn) a store's
    live feed holds."""
    store = open_store(db)
    try:
        rows = store.query("SELECT kind, count() AS n FROM anomaly_feed GROUP BY kind")
    finally:
        store.close()
    return {r["kind"]: int(r["n"]) for r in rows}


def assert_same(live: dict[str, Any], batch: dict[str, Any]) -> None:
    assert live["summary"] == batch["summary"]
    assert comparable_anomalies(live["anomalies"]) == comparable_anomalies(batch["anomalies"])
    assert live["cases"] == batch["cases"]
    assert live["kpi"] == batch["kpi"]


def produce_file(path: Path, prefix: str, partitions: int = 3) -> int:
    ks = KafkaSettings(brokers=BROKERS, topic_prefix=prefix)
    create_topics(ks, partitions)
    return produce_lines(path.read_text().splitlines(), ks)


def test_live_equals_replay_and_poison_goes_to_dlq(broker: str, workload: Any,
                                                   tmp_path: Path) -> None:
    out, truth = workload
    prefix = prefix_for("live")
    n = produce_file(out / "events.jsonl", prefix)
    assert n == count_lines(out / "events.jsonl")
    aw = Archwatch(tmp_path, prefix, "--receivers", str(out / "receivers.json"), "-w", "2",
                   "--no-recovery").start()
    try:
        aw.wait_consumed(n)
        # caught up: the watermark follows the wall clock again (after the epoch that
        # reports it), and the replay below describes the same moment
        aw.wait_watermark(now_ms() - LATENESS_MS)
        m = aw.metrics()
        assert m['archwatch_events_total{outcome="rejected"}'] == truth["counts"]["rejected"]
        assert m['archwatch_events_total{outcome="duplicate"}'] == truth["counts"]["duplicate"]
    finally:
        assert aw.stop() == 0, aw.log.read_text()[-2000:]
    assert_same(live_tables(tmp_path / "db"), replay_tables(out, tmp_path))
    # The whole workload was a backlog when the run started, its topics read side by side:
    # the watermark waited for every partition still catching up (reconcile._Clock), so
    # no deadline fired before the events that prevent it were read (no false alert
    # opened, then withdrawn, in the live feed). Without that hold: 2,001 opened, 1,454 of
    # them withdrawn once the events that prevent them were read (replay: 547, none).
    live_feed, replay_feed = feed_kinds(tmp_path / "db"), feed_kinds(tmp_path / "replay-db")
    assert live_feed.get("withdrawn", 0) == replay_feed.get("withdrawn", 0) == 0, live_feed
    assert live_feed["opened"] == replay_feed["opened"]
    dlq = list(read_topic(broker, f"{prefix}archive.dlq"))
    assert len(dlq) == truth["counts"]["rejected"]
    for msg in dlq:
        h = dict(msg.headers())
        assert h["reason"] and h["source.topic"].decode().startswith(prefix)
        assert int(h["source.offset"]) >= 0 and int(h["source.partition"]) >= 0
    assert any(b"not valid JSON" in dict(m.headers())["reason"] for m in dlq)


def produce_first_half(broker: str, out: Path, prefix: str,
                       partitions: int) -> tuple[list[str], int, KafkaSettings]:
    """Topics for ``prefix``, and the first half of the workload's lines produced to them
    (the rest is for the test to send while a run is under way): lines, half, settings."""
    lines = (out / "events.jsonl").read_text().splitlines()
    half = len(lines) // 2
    ks = KafkaSettings(brokers=broker, topic_prefix=prefix)
    create_topics(ks, partitions)
    produce_lines(lines[:half], ks)
    return lines, half, ks


def test_sigkill_mid_stream_and_restart_gives_identical_tables(broker: str, workload: Any,
                                                               tmp_path: Path) -> None:
    out, truth = workload
    prefix = prefix_for("crash")
    lines, half, ks = produce_first_half(broker, out, prefix, 3)
    # every snapshot blob written as a file (archwatch.blobstore): the restart reads them
    flags = ("--receivers", str(out / "receivers.json"), "--epoch-interval", "0.5",
             "--snapshot-file-bytes", "1")
    aw = Archwatch(tmp_path, prefix, *flags).start()
    poll(lambda: aw.metrics().get('archwatch_events_total{outcome="applied"}', 0) > half // 3,
         120, what="some events applied")
    poll(lambda: aw.metrics().get('archwatch_snapshot_files_total{op="written"}', 0) > 0,
         60, what="snapshot blob files written")
    produce_lines(lines[half:], ks)  # more arrive while it runs ...
    time.sleep(0.3)
    aw.kill()  # ... and it dies mid-stream, without a chance to flush or snapshot
    blobs = tmp_path / "db" / "recovery" / "blobs"
    assert any(p.is_file() for p in blobs.rglob("*"))
    aw2 = Archwatch(tmp_path, prefix, *flags).start()
    try:
        aw2.wait_consumed(len([x for x in lines if x.strip()]))
        aw2.wait_watermark(now_ms() - LATENESS_MS)
    finally:
        assert aw2.stop() == 0, aw2.log.read_text()[-2000:]
    assert_same(live_tables(tmp_path / "db"), replay_tables(out, tmp_path))


def test_sigkill_while_live_with_packing_between_closes_gives_identical_tables(
        broker: str, workload: Any, tmp_path: Path) -> None:
    """Live with recovery the case shards pack touched cases between epoch closes, and the
    shards write what changed into their change logs' blobs (the event-id shards their
    ids, the archive-number shards their numbers; the next close's snapshots name them):
    killed while events come in live, a restart still gives the batch answer."""
    out, truth = workload
    prefix = prefix_for("livecrash")
    lines = [x for x in (out / "events.jsonl").read_text().splitlines() if x.strip()]
    first = len(lines) // 3
    ks = KafkaSettings(brokers=broker, topic_prefix=prefix)
    create_topics(ks, 3)
    produce_lines(lines[:first], ks)
    # 3 s epochs: precool (every second) runs between closes; blobs of 4 KiB or more,
    # and a log's newest small ones once they hold that much, to files
    flags = ("--receivers", str(out / "receivers.json"), "--epoch-interval", "3",
             "--snapshot-file-bytes", "4096")
    aw = Archwatch(tmp_path, prefix, *flags).start()
    aw.wait_consumed(first)
    aw.wait_watermark(now_ms() - LATENESS_MS)  # caught up: the watermark follows the clock
    rest = lines[first:]
    chunks = [rest[i::8] for i in range(8)]  # interleaved: cases stay open across chunks
    for chunk in chunks[:5]:
        produce_lines(chunk, ks)
        time.sleep(0.4)  # paced: the input stays live (not a check of anything)
    poll(lambda: aw.metrics().get("archwatch_cases_packed_between_closes_total", 0) > 0,
         60, what="cases packed between closes")
    poll(lambda: aw.metrics().get("archwatch_ids_staged_between_closes_total", 0) > 0,
         60, what="event ids staged between closes")
    poll(lambda: aw.metrics().get("archwatch_archive_nos_staged_between_closes_total", 0) > 0,
         60, what="archive numbers staged between closes")
    aw.kill()  # mid-stream, between closes
    for chunk in chunks[5:]:
        produce_lines(chunk, ks)
    aw2 = Archwatch(tmp_path, prefix, *flags, name="-2").start()
    try:
        aw2.wait_consumed(len(lines))
        aw2.wait_watermark(now_ms() - LATENESS_MS)
    finally:
        assert aw2.stop() == 0, aw2.log.read_text()[-2000:]
    assert_same(live_tables(tmp_path / "db"), replay_tables(out, tmp_path))


def test_missing_archive_fires_on_the_wall_clock_while_idle(broker: str,
                                                            tmp_path: Path) -> None:
    """`archwatch up`: no event after the case, yet MISSING_ARCHIVE shows in the API within
    2 s of its deadline."""
    prefix = prefix_for("idle")
    made = subprocess.run(
        [sys.executable, "-m", "archwatch.cli", "users", "create", "ops", "--role", "system",
         "--system-code", "SYS-HZ-CG", "--db", str(tmp_path / "db")],
        capture_output=True, text=True, check=True, cwd=ROOT)
    token = json.loads(made.stdout)["token"]
    aw = Archwatch(tmp_path, prefix, "--archive-sla", "PT4S", "--lateness", "PT0S",
                   "--no-recovery", command="up").start()
    try:
        poll(lambda: _get(aw.port, "/healthz"), 60, what="the API")
        completed = now_ms()
        deadline = completed + 4000
        stamp = datetime.fromtimestamp(completed / 1000, UTC).isoformat()
        case = {"eventId": f"idle-{completed}", "type": "case.completed", "occurredAt": stamp,
                "source": "SYS-HZ-CG", "caseNo": f"HZIDLE{completed}", "taskId": "t",
                "taskCode": "许可-00198-000", "taskName": "n", "deptCode": "d", "deptName": "dn",
                "qym": "330101", "area": "市本级", "systemCode": "SYS-HZ-CG", "systemName": "s",
                "systemLevel": "市", "completedAt": stamp}
        ks = KafkaSettings(brokers=broker, topic_prefix=prefix)
        produce_lines([json.dumps(case, ensure_ascii=False)], ks)
        url = f"/api/v1/anomalies?code=MISSING_ARCHIVE&caseNo={case['caseNo']}"
        poll(lambda: (_get(aw.port, url, token) or {}).get("total") == 1, 30, every=0.05,
             what="MISSING_ARCHIVE in the API")
        seen = now_ms()
        assert seen > deadline
        assert seen - deadline <= 2000, f"{seen - deadline} ms after the deadline"
    finally:
        assert aw.stop() == 0, aw.log.read_text()[-2000:]


def _get(port: int, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2, headers=headers)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None
