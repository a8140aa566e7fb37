"""`anomaly` ordered by (opened_at, anomaly_id) (migration 0013, issue #10): the migration
keeps every current row and survives a re-run; an anomaly whose opened_at moves leaves
one row (the engine's tombstone, and the restart reconcile's); and the list's newest-first
windows, and its totals and summary from `anomaly_count` (0014), give exactly the answers
of the full sort and count they replace."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from archwatch.api.app import create_app
from archwatch.api.settings import Settings
from archwatch.connectors.store_sink import reconcile_all
from fastapi.testclient import TestClient

from archwatch import rollup
from archwatch.engine import Reconcile, VersionClock, Write, anomaly_row, diff_anomalies
from archwatch.migrate import load_migrations, migrate
from archwatch.rules import Anomaly
from archwatch.store import ChdbStore
from archwatch.timeutil import ch_time, to_iso_utc
from tests.conftest import log_in

DAY = 86_400_000
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
QYMS = ("330102", "330105", "330106")
CODES = ("MISSING_ARCHIVE", "NOT_CHECKED", "CHECK_FAILED", "DUPLICATE_RECEIPT")
COLUMNS = "anomaly_id, code, case_no, qym, opened_at, resolved_at, version"


def _anomaly(i: int, opened_ms: int, code: str = "MISSING_ARCHIVE", qym: str = "330102",
             resolved_ms: int | None = None) -> Anomaly:
    return Anomaly(anomaly_id=f"a{i:05d}", code=code, case_no=f"C{i:05d}", archive_no="",
                   receiver_id="", qym=qym, dept_code=f"D{qym}", system_code="SYS-1",
                   task_code="T1", opened_at=opened_ms, resolved_at=resolved_ms, detail="")


def _final(store: ChdbStore) -> list[dict[str, Any]]:
    return store.query(f"SELECT {COLUMNS} FROM anomaly FINAL ORDER BY anomaly_id")


def _sorting_key(store: ChdbStore) -> str:
    return store.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase()"
                       " AND name = 'anomaly'")[0]["sorting_key"]


def test_migration_keeps_every_current_row_and_survives_a_rerun(store: ChdbStore) -> None:
    for m in load_migrations():  # a store filled before 0013
        if m.version < 13:
            for stmt in m.statements():
                store.command(stmt)
    assert _sorting_key(store) == "code, anomaly_id"
    clock = VersionClock()
    rows = [anomaly_row(_anomaly(i, T0 + i * 3_600_000, CODES[i % 4]), "c001", clock.next())
            for i in range(300)]
    # later versions: resolved, moved (same key under 0001's layout), withdrawn
    rows += [anomaly_row(_anomaly(i, T0 + i * 3_600_000, CODES[i % 4], resolved_ms=T0 + DAY * 30),
                         "c001", clock.next()) for i in range(0, 300, 3)]
    rows += [anomaly_row(_anomaly(i, T0 + 7, CODES[i % 4]), "c001", clock.next())
             for i in range(1, 300, 7)]
    rows += [anomaly_row(_anomaly(i, T0, CODES[i % 4]), "c001", clock.next(), deleted=True)
             for i in range(2, 300, 11)]
    store.insert("anomaly", rows)
    before = _final(store)
    assert 250 < len(before) < 300

    assert "0013_anomaly_by_time.sql" in migrate(store)
    assert _sorting_key(store) == "opened_at, anomaly_id"
    assert _final(store) == before
    parts = store.query("SELECT projections FROM system.parts WHERE active AND table = 'anomaly'"
                        " AND database = currentDatabase()")
    # (0013's p_case_no too, until 0017 dropped it for anomaly_by_case)
    assert parts and all(sorted(p["projections"]) == ["p_code"] for p in parts)

    # a crash after the swap, before the last DROP, then the migration again from the top
    stmts = next(m for m in load_migrations() if m.version == 13).statements()
    assert stmts[-2].startswith("EXCHANGE") and stmts[-1].startswith("DROP")
    for stmt in stmts[:-1] + stmts:
        store.command(stmt)
    assert _sorting_key(store) == "opened_at, anomaly_id"
    assert _final(store) == before
    assert not store.query("SELECT name FROM system.tables WHERE name = 'anomaly_next'")


def test_a_moved_opened_at_leaves_one_row(store: ChdbStore) -> None:
    migrate(store)
    clock = VersionClock()
    a = _anomaly(1, T0 + DAY * 40)
    moved = replace(a, opened_at=T0 + DAY * 35)  # an earlier completion came in late
    first = diff_anomalies({}, {a.anomaly_id: a}, "c001", clock)
    second = diff_anomalies({a.anomaly_id: a}, {a.anomaly_id: moved}, "c001", clock)
    assert [(w.row["opened_at"], w.row["is_deleted"]) for w in second if w.table == "anomaly"] \
        == [(ch_time(a.opened_at), 1), (ch_time(moved.opened_at), 0)]
    assert [w.row["kind"] for w in second if w.table == "anomaly_feed"] == ["updated"]
    resolved = diff_anomalies({a.anomaly_id: moved},
                              {a.anomaly_id: replace(moved, resolved_at=T0 + DAY * 50)},
                              "c001", clock)
    assert [w.row["is_deleted"] for w in resolved if w.table == "anomaly"] == [0]
    for w in first + second:
        store.insert(w.table, [w.row])
    final = _final(store)
    assert [(r["anomaly_id"], r["opened_at"]) for r in final] == [("a00001", "2025-02-05 00:00:00.000")]

    # a crash lost the tombstone: the restart's reconcile (rows compared by their
    # (opened_at, anomaly_id) key, opened_at read back from DateTime64) withdraws the old key
    store.command("TRUNCATE TABLE anomaly")
    store.insert("anomaly", [w.row for w in first])
    store.insert("anomaly", [anomaly_row(moved, "c001", clock.next())])
    assert len(_final(store)) == 2
    belief = [Write("anomaly", anomaly_row(moved, "c001", clock.next()))]
    reconcile_all(store, [Reconcile("c001", belief)])
    assert [r["opened_at"] for r in _final(store)] == ["2025-02-05 00:00:00.000"]
    reconcile_all(store, [Reconcile("c001", belief)])  # nothing left to withdraw
    assert store.query("SELECT countIf(is_deleted = 1) AS n FROM anomaly")[0]["n"] == 1


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChdbStore, TestClient]]:
    """A store of anomalies bunched in time (dense days, long gaps, a sparse newest day),
    so pages come from the first window, a wider one, or the whole table."""
    store = ChdbStore(tmp_path_factory.mktemp("anomaly-list") / "db")
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        migrate(store)
        rnd = random.Random(13)
        clock = VersionClock()
        rows = []
        days = [0, 1, 2, 30, 31, 200, 201, 202, 500, 700, 701, 703]
        for i in range(2500):
            day = rnd.choice(days[:-1]) if i % 500 else days[-1]  # 5 on the newest day
            opened = T0 + day * DAY + rnd.randrange(DAY) // 1000 * 1000  # ties on the second
            a = _anomaly(i, opened, CODES[i % 4] if i % 97 else "BACKUP_HASH_MISMATCH",
                         QYMS[i % 3], resolved_ms=opened + DAY if i % 5 == 0 else None)
            rows.append(anomaly_row(a, "c001", clock.next()))
            if i % 9 == 0:  # moved: the tombstone and the row under its new key
                rows += [w.row for w in diff_anomalies(
                    {a.anomaly_id: a}, {a.anomaly_id: replace(a, opened_at=opened - DAY * 2)},
                    "c001", clock) if w.table == "anomaly"]
            if i % 13 == 0:
                rows.append(anomaly_row(a, "c001", clock.next(), deleted=True))
        store.insert("anomaly", rows)
        # the shards' counts, as the dataflow writes them (rollup.count_differences: equal)
        store.command(f"INSERT INTO anomaly_count SELECT *, 1, 0 FROM ({rollup.COUNTS})")
        newest_day = store.query("SELECT count() AS n FROM anomaly FINAL WHERE opened_at >="
                                 " (SELECT max(opened_at) FROM anomaly) - toIntervalDay(1)")
        assert newest_day[0]["n"] < 20  # a page of 20 needs a wider window
        client = stack.enter_context(TestClient(
            create_app(Settings(read_cache_entries=0), store=store),
            raise_server_exceptions=False))
        log_in(client, store)
        yield store, client


@pytest.mark.parametrize("query", [
    {}, {"qym": "330105"}, {"status": "open"}, {"code": "BACKUP_HASH_MISMATCH"},
    {"code": ["NOT_CHECKED", "CHECK_FAILED"], "status": "resolved"},
    {"openedTo": to_iso_utc(T0 + 201 * DAY)}, {"openedFrom": to_iso_utc(T0 + 31 * DAY)},
    {"openedFrom": to_iso_utc(T0 + DAY), "openedTo": to_iso_utc(T0 + 3 * DAY), "qym": "330106"},
    {"caseNo": "C00018"},
])
def test_list_pages_equal_the_full_sort(listed: tuple[ChdbStore, TestClient],
                                        query: dict[str, Any]) -> None:
    store, client = listed
    where = {"qym": "qym = {qym:String}", "status": {"open": "resolved_at IS NULL",
                                                     "resolved": "resolved_at IS NOT NULL"},
             "code": "code IN {code:Array(String)}", "caseNo": "case_no = {caseNo:String}",
             "openedFrom": "opened_at >= parseDateTime64BestEffort({openedFrom:String}, 3)",
             "openedTo": "opened_at < parseDateTime64BestEffort({openedTo:String}, 3)"}
    parts = [where[k][query[k]] if k == "status" else where[k] for k in query]
    params = {k: ([v] if k == "code" and isinstance(v, str) else v) for k, v in query.items()}
    full = store.query("SELECT anomaly_id FROM anomaly FINAL WHERE "
                       + (" AND ".join(parts) or "1") + " ORDER BY opened_at DESC, anomaly_id",
                       params)
    assert full, query
    for size, no in ((5, 1), (20, 1), (20, 2), (50, 7), (100, 30)):
        got = client.get("/api/v1/anomalies", params={**query, "pageSize": size, "pageNo": no})
        assert got.status_code == 200, got.text
        body = got.json()
        want = [r["anomaly_id"] for r in full[(no - 1) * size:no * size]]
        assert [a["anomalyId"] for a in body["items"]] == want, (query, size, no)
        assert body["total"] == (len(full) if want else 0)
    # the summary with the same filters: from anomaly_count when it has their columns
    by_code = store.query(
        "SELECT code, count() AS total, countIf(resolved_at IS NULL) AS open FROM anomaly FINAL"
        " WHERE " + (" AND ".join(parts) or "1") + " GROUP BY code", params)
    summary = client.get("/api/v1/anomalies/summary", params=query).json()
    assert summary["byCode"] == {r["code"]: {"total": r["total"], "open": r["open"]}
                                 for r in by_code}
