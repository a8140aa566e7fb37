"""Migrations 0012's projections, 0016's case_key, 0017's copies by case number and 0018's
case_doc on a store filled before them, and the case trace, an item's cases and the
anomalies of a case as rows move to another key, update, merge and are reset (issue #10,
query latency). Apart from tests/test_lookups.py: chDB opens one store directory per
process at a time, and that module keeps one open."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from archwatch.api.app import create_app
from archwatch.api.auth import Principal
from archwatch.api.errors import ApiError
from archwatch.api.queries import ANOMALY_COLUMNS
from archwatch.api.routes.anomalies import AnomalyClass, AnomalyFilter, Status
from archwatch.api.settings import Settings
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from archwatch.accounts import Role
from archwatch.casedoc import CASE_DOCS, current
from archwatch.lookups import anomaly_current
from archwatch.migrate import load_migrations, migrate
from archwatch.replay import ENGINE_TABLES
from archwatch.rules import CLASS_OF_CODE
from archwatch.store import ChdbStore, open_store
from tests.conftest import log_in


def _row(case_no: str, task: str, qym: str, version: int, deleted: int = 0,
         status: str = "PENDING") -> dict[str, Any]:
    return {"case_no": case_no, "task_id": task, "task_code": f"code-{task}",
            "task_name": f"name-{task}", "dept_code": f"D{qym}", "dept_name": "dept",
            "qym": qym, "area": "area", "system_code": "SYS-1", "system_name": "sys",
            "system_level": "市", "completed_at": "2025-03-01 00:00:00",
            "first_received_at": None, "archive_count": 0, "status": status, "year": 2025,
            "src": "c001", "version": version, "is_deleted": deleted}


def _anomaly(case_no: str, version: int, resolved: str | None) -> dict[str, Any]:
    return {"anomaly_id": f"a-{case_no}", "code": "MISSING_ARCHIVE", "class": "漏",
            "case_no": case_no, "archive_no": "", "receiver_id": "", "qym": "330102",
            "dept_code": "", "system_code": "", "task_code": "",
            "opened_at": "2025-04-01 00:00:00", "resolved_at": resolved, "detail": "",
            "src": "c001", "version": version, "is_deleted": 0}


def _migrated_and_empty(store: ChdbStore) -> None:
    """The module's shared store, migrated, with every table the engine writes empty."""
    migrate(store)
    for table in ENGINE_TABLES:
        store.command(f"TRUNCATE TABLE {table}")


def _wait_for_mutations(store: ChdbStore) -> None:
    deadline = time.monotonic() + 60
    while store.query("SELECT count() AS n FROM system.mutations WHERE NOT is_done")[0]["n"]:
        assert time.monotonic() < deadline, "MATERIALIZE PROJECTION did not finish"
        time.sleep(0.1)


def test_migration_backfills_and_the_trace_follows_moves_merges_and_resets(
        tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    assert isinstance(store, ChdbStore)
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        # a store filled before 0012: its parts have no projection until the migration
        for m in load_migrations():
            if m.version < 12:
                for stmt in m.statements():
                    store.command(stmt)
        store.insert("case_state", [_row(f"C{i}", f"T{i % 3}", "330102", 1) for i in range(50)])
        store.insert("anomaly", [_anomaly("C7", 1, None)])
        migrate(store)
        _wait_for_mutations(store)
        parts = store.query(
            "SELECT count() AS n FROM system.parts WHERE active AND table = 'case_state'"
            " AND has(projections, 'p_item_keys') = 0")
        assert parts[0]["n"] == 0, "case_state has parts without p_item_keys"
        # 0016 then 0017: the projections by case number went (case_state's in 0016,
        # anomaly's in 0017), and so did 0016's case_key, then 0017's copies in 0018
        for table in ("case_state", "anomaly"):
            assert store.query("SELECT count() AS n FROM system.parts WHERE active"
                               " AND table = {t:String} AND has(projections, 'p_case_no')",
                               {"t": table}) == [{"n": 0}]
        assert store.query("SELECT name FROM system.tables WHERE database = currentDatabase()"
                           " AND name LIKE 'case_key%'") == []
        # 0018's case_doc holds the rows already there, both kinds; 0017's copies went
        assert store.query("SELECT name FROM system.tables WHERE database = currentDatabase()"
                           " AND (name LIKE 'anomaly_by_case%' OR name LIKE 'case_by_no%')"
                           ) == []
        assert store.query("SELECT kind, count() AS n FROM case_doc GROUP BY kind"
                           " ORDER BY kind") == [{"kind": 0, "n": 50}, {"kind": 1, "n": 1}]
        # (ClickHouse reads a projection index only from tables of 1M rows on,
        # min_table_rows_to_use_projection_index: below that a scan is as cheap)
        client = stack.enter_context(TestClient(
            create_app(Settings(read_cache_entries=0), store=store),
            raise_server_exceptions=False))
        log_in(client, store)

        def trace() -> dict[str, Any]:
            return client.get("/api/v1/cases/C7").json()

        t = trace()
        assert t["case"]["taskId"] == "T1" and t["case"]["qym"] == "330102"
        assert [a["resolvedAt"] for a in t["anomalies"]] == [None]
        # the case moves to another key (tombstone under the old one) and its anomaly
        # is resolved: the trace shows the new row only
        store.insert("case_state", [_row("C7", "T1", "330102", 2, deleted=1),
                                    _row("C7", "T9", "330106", 3, status="ARCHIVED_OK")])
        store.insert("anomaly", [_anomaly("C7", 2, "2025-04-02 00:00:00")])
        t = trace()
        assert (t["case"]["taskId"], t["case"]["qym"], t["case"]["status"]) == (
            "T9", "330106", "ARCHIVED_OK")
        assert [a["resolvedAt"] for a in t["anomalies"]] == ["2025-04-02T00:00:00Z"]
        # the moved case is listed under its new item only, in both chains
        for path, params in (("T9", {"year": 2025, "qym": "330106", "deptCode": "D330106"}),
                             ("T9", {"systemCode": "SYS-1"}), ("T1", {"systemCode": "SYS-1"})):
            cases = client.get(f"/api/v1/drill/items/{path}/cases", params=params).json()
            assert ("C7" in [c["caseNo"] for c in cases["items"]]) == (path == "T9")
        # the copy holds the moved case's rows under both keys, the old one tombstoned
        assert [(r["ident"][-2:], r["is_deleted"]) for r in store.query(
            "SELECT ident, is_deleted FROM case_doc WHERE case_no = 'C7' AND kind = 0"
            " ORDER BY ident, version")] == [("T1", 0), ("T1", 1), ("T9", 0)]
        # merges rebuild the projections from the merged parts (replaced rows dropped)
        # and collapse the copy's versions
        for table in ("case_state", "anomaly", "case_doc"):
            store.command(f"OPTIMIZE TABLE {table} FINAL")
        assert trace()["case"]["taskId"] == "T9"
        assert [a["resolvedAt"] for a in trace()["anomalies"]] == ["2025-04-02T00:00:00Z"]
        # what `archwatch replay` does first: the projections go with their rows, and
        # the copies with their sources
        for table in ENGINE_TABLES:
            store.command(f"TRUNCATE TABLE {table}")
        assert client.get("/api/v1/cases/C7").status_code == 404
        store.insert("case_state", [_row("C7", "T4", "330102", 5)])
        assert trace()["case"]["taskId"] == "T4" and trace()["anomalies"] == []
        assert store.query("SELECT count() AS n FROM case_doc") == [{"n": 1}]


ANOMALY_KEYS = ("anomaly_id", "code", "class", "case_no", "archive_no", "receiver_id", "qym",
                "dept_code", "system_code", "task_code", "opened", "resolved", "detail")

_IDS = {  # every version of a key shares its case, receiver and code (rules.anomaly_id)
    "a1": ("C1", "", "MISSING_ARCHIVE"), "a2": ("C1", "", "NOT_CHECKED"),
    "a3": ("", "R1", "RECEIVER_DOWN"), "a4": ("", "R2", "RECEIVER_DOWN"),
    "a5": ("C2", "", "MISSING_ARCHIVE"),
}
_write = st.tuples(st.sampled_from(sorted(_IDS)), st.booleans(), st.booleans())


def _insert_anomalies(store: ChdbStore, block: list[tuple[str, bool, bool]],
                      version: int) -> int:
    """One insert of ``_write``s (id, tombstone, resolved), each a new version; returns
    the last version used."""
    rows = []
    for aid, deleted, resolved in block:
        version += 1
        case_no, receiver, code = _IDS[aid]
        rows.append({**_anomaly(case_no, version, "2025-04-02 00:00:00" if resolved
                                else None), "anomaly_id": aid, "receiver_id": receiver,
                     "code": code, "opened_at": f"2025-04-01 00:00:0{aid[1]}",
                     "is_deleted": int(deleted)})
    store.insert("anomaly", rows)
    return version


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.lists(_write, min_size=1, max_size=6), min_size=1, max_size=3),
       merge=st.booleans())
def test_a_receiver_s_or_a_code_s_current_anomalies_equal_final(
        store: ChdbStore, blocks: list[list[tuple[str, bool, bool]]], merge: bool) -> None:
    """lookups.anomaly_current (the raw rows' newest version per key, tombstones dropped)
    answers what ``anomaly FINAL`` does, whatever the versions, tombstones, inserts and
    merges, for each filter it is used with."""
    migrate(store)
    store.command("TRUNCATE TABLE anomaly")
    version = 0
    for block in blocks:
        version = _insert_anomalies(store, block, version)
    if merge:
        store.command("OPTIMIZE TABLE anomaly FINAL")
    for raw in ("receiver_id = 'R1'", "code = 'RECEIVER_DOWN'",
                "code = 'RECEIVER_DOWN' AND receiver_id = 'R2'", "receiver_id = 'R9'"):
        cols = "anomaly_id, resolved_at, version"
        assert store.query(f"SELECT {cols} FROM {anomaly_current(raw)} ORDER BY anomaly_id") \
            == store.query(f"SELECT {cols} FROM anomaly FINAL WHERE {raw} ORDER BY anomaly_id"), raw


_case_write = st.tuples(st.sampled_from(["C1", "C2", "C3"]), st.sampled_from(["T1", "T2"]),
                        st.sampled_from(["330102", "330106"]), st.booleans(),
                        st.sampled_from(["PENDING", "ARCHIVED_OK"]))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.lists(_case_write, min_size=1, max_size=6), min_size=1, max_size=3),
       anomalies=st.lists(st.lists(_write, min_size=1, max_size=6), min_size=0, max_size=3),
       merge=st.sampled_from(["none", "sources", "copies", "all"]))
def test_the_copies_by_case_number_give_their_sources_final(
        store: ChdbStore, blocks: list[list[tuple[str, str, str, bool, str]]],
        anomalies: list[list[tuple[str, bool, bool]]], merge: str) -> None:
    """0018's case_doc, filled by its views, answers what ``case_state FINAL`` and
    ``anomaly FINAL`` do for each case, under FINAL and through the trace's own reader
    (casedoc.current), whatever the versions, tombstones, keys moved, inserts and merges
    on either side."""
    _migrated_and_empty(store)
    version = 0
    for block in blocks:
        rows = []
        for case_no, task, qym, deleted, status in block:
            version += 1
            rows.append(_row(case_no, task, qym, version, int(deleted), status))
        store.insert("case_state", rows)
    for block in anomalies:
        version = _insert_anomalies(store, block, version)
    merged = {"none": (), "sources": ("case_state", "anomaly"),
              "copies": ("case_doc",), "all": ("case_state", "anomaly", "case_doc")}[merge]
    for table in merged:
        store.command(f"OPTIMIZE TABLE {table} FINAL")
    # 0018's case_doc: FINAL over it, and the trace's reader over its raw rows, give the
    # sources' current rows of each case, every column the API reads, typed alike
    state_cols = ("case_no, task_id, task_code, task_name, dept_code, dept_name, qym, area,"
                  " system_code, system_name, system_level, archive_count, status, year,"
                  " toUnixTimestamp64Milli(completed_at) AS c_ms,"
                  " toUnixTimestamp64Milli(first_received_at) AS f_ms")
    for case_no in ("C1", "C2", "C3"):
        c = {"c": case_no}
        # (these writes may leave a case current under two keys, which the engine's never
        # do: the reader then takes the newest write, as the trace shows one state)
        states = store.query(f"SELECT {state_cols} FROM case_state FINAL"
                             " WHERE case_no = {c:String} ORDER BY version DESC", c)
        wanted = store.query(f"SELECT {ANOMALY_COLUMNS} FROM anomaly FINAL"
                             " WHERE case_no = {c:String} ORDER BY opened, code", c)
        got = current(r["doc"] for r in store.query(CASE_DOCS, c))
        if states:
            assert got.state is not None, case_no
            assert {k: got.state[k] for k in states[0]} == states[0], case_no
        else:
            assert got.state is None, case_no
        assert [{k: a[k] for k in ANOMALY_KEYS} for a in got.anomalies] == wanted, case_no
        assert store.query("SELECT kind, count() AS n FROM case_doc FINAL"
                           " WHERE case_no = {c:String} GROUP BY kind ORDER BY kind", c) == [
            {"kind": kind, "n": n} for kind, n in ((0, len(states)), (1, len(wanted))) if n]
    assert store.query("SELECT count() AS n FROM case_doc WHERE case_no = ''") == [{"n": 0}]


_filters = st.fixed_dictionaries({}, optional={
    "code": st.lists(st.sampled_from(["MISSING_ARCHIVE", "NOT_CHECKED", "CHECK_FAILED"]),
                     min_size=1, max_size=2),
    "cls": st.sampled_from(list(AnomalyClass)),
    "status": st.sampled_from(list(Status)),
    "qym": st.sampled_from(["330102", "330106"]),
    "systemCode": st.sampled_from(["", "SYS-1"]),
    "openedFrom": st.sampled_from([datetime(2025, 4, 1, 0, 0, 2, tzinfo=UTC),
                                   datetime(2025, 4, 1, 8, 0, 2, 500, tzinfo=UTC)]),
    "openedTo": st.sampled_from([datetime(2025, 4, 1, 0, 0, 4, tzinfo=UTC)]),
})
_scopes = st.sampled_from([("", ""), ("330102", ""), ("330106", ""), ("", "SYS-1")])
# each condition alone, on every example (a random combination is added to them)
_EACH_FILTER: list[dict[str, Any]] = [
    {}, {"status": Status.open}, {"status": Status.resolved}, {"code": ["NOT_CHECKED"]},
    {"code": ["MISSING_ARCHIVE", "CHECK_FAILED"]}, *({"cls": c} for c in AnomalyClass),
    {"qym": "330106"}, {"systemCode": "SYS-1"}, {"systemCode": ""},
    {"openedFrom": datetime(2025, 4, 1, 0, 0, 2, tzinfo=UTC)},
    {"openedTo": datetime(2025, 4, 1, 0, 0, 2, 500, tzinfo=UTC)},
]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.lists(st.tuples(
           st.sampled_from(["a1", "a2", "a5"]), st.booleans(), st.booleans(),
           st.sampled_from(["330102", "330106"]), st.sampled_from(["", "SYS-1"]),
           st.sampled_from(["MISSING_ARCHIVE", "NOT_CHECKED", "CHECK_FAILED"]),
           st.sampled_from([1, 2])), min_size=1, max_size=6), min_size=1, max_size=3),
       filters=st.lists(_filters, max_size=3), scope=_scopes,
       merge=st.booleans())
# two anomalies of one case opened at once, their codes in the other order than their ids:
# the SQL orders them by id (a sort by opening and code alone would not)
@example(blocks=[[("a1", False, False, "330102", "", "NOT_CHECKED", 1),
                  ("a2", False, False, "330102", "", "CHECK_FAILED", 1)]],
         filters=[], scope=("", ""), merge=False)
def test_a_case_s_anomaly_filters_in_python_answer_as_the_sql_ones(
        store: ChdbStore, blocks: list[list[tuple[str, bool, bool, str, str, str, int]]],
        filters: list[dict[str, Any]], scope: tuple[str, str], merge: bool) -> None:
    """The anomaly list and summary with ``caseNo`` filter the case's current rows from
    case_doc in Python (AnomalyFilter.checks, 0018): they keep exactly the rows, in the
    order, that the same filters in SQL keep from ``anomaly FINAL``, whatever the rows'
    versions, tombstones, codes, regions and the caller's scope."""
    _migrated_and_empty(store)
    version = 0
    for block in blocks:
        rows = []
        for aid, deleted, resolved, qym, system, code, second in block:
            version += 1
            case_no = _IDS[aid][0]
            rows.append({**_anomaly(case_no, version, "2025-04-02 00:00:00" if resolved
                                    else None), "anomaly_id": aid, "code": code,
                         "class": CLASS_OF_CODE[code], "qym": qym, "system_code": system,
                         "opened_at": f"2025-04-01 00:00:0{second}",  # (ties too)
                         "is_deleted": int(deleted)})
        store.insert("anomaly", rows)
    if merge:
        store.command("OPTIMIZE TABLE case_doc FINAL")
    principal = Principal("u", Role.district, qym=scope[0], system_code=scope[1])
    for case_no in ("C1", "C2", "C9"):
        for kw in _EACH_FILTER + filters:
            f = AnomalyFilter(**kw, caseNo=case_no)
            try:
                where, params = f.scoped(principal)
            except ApiError:  # outside the scope: both refuse
                with pytest.raises(ApiError):
                    f.case_rows(store, principal)
                continue
            want = store.query(f"SELECT {ANOMALY_COLUMNS} FROM anomaly FINAL WHERE {where}"
                               " ORDER BY opened_at DESC, anomaly_id", params)
            got = [{k: r[k] for k in ANOMALY_KEYS} for r in f.case_rows(store, principal)]
            assert got == want, (case_no, kw, scope)


def test_case_doc_keeps_any_text_and_null(store: ChdbStore) -> None:
    """case_doc's views write each text value through toJSONString (0018): quotes,
    backslashes, slashes, control characters and non-ASCII come back as they went in,
    and a missing time as None."""
    _migrated_and_empty(store)
    text = 'a"b\\c/d\n\te\x01 值 \u2028 \'q\' {"x":1}'
    store.insert("case_state", [{**_row("C1", "T1", "330102", 1), "task_name": text,
                                 "dept_name": text}])
    store.insert("anomaly", [{**_anomaly("C1", 2, None), "detail": text, "archive_no": text}])
    got = current(r["doc"] for r in store.query(CASE_DOCS, {"c": "C1"}))
    assert got.state is not None
    assert (got.state["task_name"], got.state["dept_name"], got.state["f_ms"]) == (
        text, text, None)
    assert [(a["detail"], a["archive_no"], a["resolved"]) for a in got.anomalies] == [
        (text, text, None)]
