"""A generated workload through the real dataflow and store, against its ground truth."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from archwatch.connectors.files import JsonlFiles
from archwatch.connectors.store_sink import EpochStoreSink, StoreSink, Tally
from archwatch.dataflows.reconcile import build_flow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main

from archwatch import blobstore, report
from archwatch.blobstore import BlobStore
from archwatch.engine import TABLE_KEYS, Write
from archwatch.generate import GenerateOptions, generate
from archwatch.migrate import migrate
from archwatch.receivers import load_registrations
from archwatch.settings import EngineSettings
from archwatch.store import open_store
from archwatch.timeutil import parse_ts
from tests.conftest import comparable_anomalies, replay_into


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("workload")
    truth = generate(out, GenerateOptions(cases=3000, seed=5, anomaly_rate=0.3,
                                          split_sources=True, heartbeat_hours=2))
    return out, truth


def settings_for(out: Path, truth: dict) -> EngineSettings:
    return EngineSettings(as_of=parse_ts(truth["asOf"]),
                          receivers=load_registrations(out / "receivers.json"))


def check_truth(got: dict, truth: dict) -> None:
    assert got["summary"] == truth["summary"]
    assert comparable_anomalies(got["anomalies"]) == comparable_anomalies(truth["anomalies"])
    assert got["kpi"] == truth["kpi"]
    statuses: dict[str, int] = {}
    for c in got["cases"]:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    assert statuses == truth["statuses"]


def test_replay_matches_ground_truth(workload, store, tmp_path: Path) -> None:
    out, truth = workload
    got = replay_into(store, [out / "events.jsonl"], settings_for(out, truth), tmp_path)
    assert got["counts"] == truth["counts"]
    assert len(truth["planted"]) > 15  # every planted kind occurs
    check_truth(got, truth)


def test_per_source_files_one_after_another_give_the_same_tables(workload, store,
                                                                 tmp_path: Path) -> None:
    """Contract §3: cases, then pushes, then receipts... weeks 'late' relative to each
    other, give exactly the tables of the interleaved feed."""
    out, truth = workload
    files = [out / f for f in truth["files"] if f != "events.jsonl"]
    assert len(files) >= 5
    got = replay_into(store, files, settings_for(out, truth), tmp_path)
    assert got["counts"] == truth["counts"]
    check_truth(got, truth)


class _Recorder(DynamicSink[Any]):
    """An alert sink that keeps what it gets (every worker's partition, one list)."""

    def __init__(self) -> None:
        self.rows: list[Write] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        rows = self.rows

        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                rows.extend(w for chunk in items for w in chunk)

        return Part()


def _latest(rows: list[dict[str, Any]], key: tuple[str, ...]) -> dict[tuple, int]:
    """Each key's version, where its highest is not a deletion: what FINAL reads."""
    out: dict[tuple, tuple[int, int]] = {}
    for r in rows:
        k = tuple(r[c] for c in key)
        if k not in out or r["version"] > out[k][0]:
            out[k] = (r["version"], r["is_deleted"])
    return {k: version for k, (version, deleted) in out.items() if not deleted}


@pytest.mark.parametrize("epoch_sink", [False, True], ids=["store-sink", "epoch-sink"])
def test_two_workers_give_the_same_tables(workload, tmp_path: Path, epoch_sink: bool) -> None:
    """Also through the sinks live runs use with recovery (EpochStoreSink: items keyed by
    their shard, routed to partitions across the workers, drained at every epoch's
    close; and an alert sink beside it, which gets every anomaly row too), with recovery
    on and short epochs."""
    out, truth = workload
    store = open_store(tmp_path / "db")
    migrate(store)
    tally = Tally()
    rejects: list = []
    settings = settings_for(out, truth)
    sink: StoreSink | EpochStoreSink = StoreSink(store, tally, rejects.extend)
    recovery = None
    alerts = _Recorder() if epoch_sink else None
    if epoch_sink:
        sink = EpochStoreSink(store, tally, rejects.extend, parts=2, alerts_first=False)
        settings = replace(settings, recovery=True)
        (tmp_path / "recovery").mkdir()
        init_db_dir(tmp_path / "recovery", 2)
        recovery = RecoveryConfig(tmp_path / "recovery")
    flow = build_flow(JsonlFiles([out / "events.jsonl"]), sink, settings, alerts=alerts)
    # with recovery, every snapshot blob as a file (two worker threads writing them)
    files = BlobStore(tmp_path / "recovery" / "blobs", min_bytes=1) if recovery else None
    with blobstore.using(files):
        cluster_main(flow, [], 0, worker_count_per_proc=2, recovery_config=recovery,
                     epoch_interval=timedelta(milliseconds=20))
    assert files is None or any((tmp_path / "recovery" / "blobs").iterdir())
    counts = dict(tally.counts)
    assert counts["applied"] == truth["counts"]["applied"]
    assert len(rejects) == truth["counts"]["rejected"]
    check_truth(report.full(store), truth)
    if alerts is not None:  # the alert sink got the store's anomaly rows, no other rows
        assert {w.table for w in alerts.rows} == {"anomaly", "anomaly_count"}
        for table, key in (("anomaly", ("anomaly_id",)),
                           ("anomaly_count", TABLE_KEYS["anomaly_count"])):
            stored = store.query(f"SELECT {', '.join(key)}, version, is_deleted"
                                 f" FROM {table} FINAL")
            assert stored
            assert _latest([w.row for w in alerts.rows if w.table == table], key) \
                == _latest(stored, key)
    store.close()


def test_truth_file_is_deterministic(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", GenerateOptions(cases=200, seed=9))
    b = generate(tmp_path / "b", GenerateOptions(cases=200, seed=9))
    assert a == b
    assert (tmp_path / "a" / "events.jsonl").read_bytes() == \
        (tmp_path / "b" / "events.jsonl").read_bytes()
    c = generate(tmp_path / "c", GenerateOptions(cases=200, seed=10))
    assert json.dumps(c["kpi"]) != json.dumps(a["kpi"])


def test_events_sorted_on_disk_are_the_events_sorted_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large workloads sort their events a chunk at a time and merge the chunks from disk
    (memory stays bounded): same files, byte for byte, and no spill files left behind."""
    opts = GenerateOptions(cases=300, seed=4, split_sources=True)
    whole = generate(tmp_path / "whole", opts)
    monkeypatch.setattr("archwatch.generate.SPOOL_CHUNK", 97)  # ~25 chunks
    chunked = generate(tmp_path / "chunked", opts)
    assert chunked == whole and len(whole["files"]) > 2
    for name in whole["files"]:
        assert (tmp_path / "chunked" / name).read_bytes() == \
            (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "chunked").iterdir()) == sorted(
        whole["files"] + ["receivers.json", "truth.json"])


def test_a_second_replay_into_the_same_store_describes_only_its_own_input(
        workload, store, tmp_path: Path) -> None:
    out, truth = workload
    s = settings_for(out, truth)
    first = replay_into(store, [out / "events.jsonl"], s, tmp_path)
    again = replay_into(store, [out / "events.jsonl"], s, tmp_path)
    assert again == first  # same input twice: same tables
    from tests.conftest import GOLDEN, scenario_settings

    other = replay_into(store, [GOLDEN / "on-time" / "events.jsonl"],
                        scenario_settings("on-time"), tmp_path)
    assert other["summary"] == {} and len(other["cases"]) == 1  # nothing of the first run
