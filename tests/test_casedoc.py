"""casedoc.current, the case trace's reading of case_doc's raw rows (0018), alone: the rule
ReplacingMergeTree's FINAL applies, whatever order the rows come in. (Against the store's
own FINAL: tests/test_case_lookup_migration.py.)"""

from __future__ import annotations

import itertools
import json
from typing import Any

from archwatch.casedoc import current


def _state(version: int, task: str, deleted: int = 0, status: str = "PENDING") -> str:
    return json.dumps({
        "k": "s", "v": str(version), "d": str(deleted), "case_no": "C1", "task_id": task,
        "task_code": "", "task_name": "", "dept_code": "D1", "dept_name": "", "qym": "330102",
        "area": "", "system_code": "S", "system_name": "", "system_level": "市",
        "c_ms": "1740787200000", "f_ms": None, "archive_count": "0", "status": status,
        "year": "2025"})


def _anomaly(version: int, aid: str, opened: int, resolved: int | None = None,
             deleted: int = 0) -> str:
    return json.dumps({
        "k": "a", "v": str(version), "d": str(deleted), "anomaly_id": aid, "code": "NOT_CHECKED",
        "class": "漏", "case_no": "C1", "archive_no": "", "receiver_id": "", "qym": "330102",
        "dept_code": "", "system_code": "", "task_code": "", "opened": str(opened),
        "resolved": None if resolved is None else str(resolved), "detail": "a \"quoted\" / 值"})


def _each_order(docs: list[str]) -> list[Any]:
    answers = []
    for order in itertools.permutations(docs):
        got = current(order)
        answers.append((got.state, got.anomalies))
    return answers


def test_newest_version_of_each_row_wins_in_any_order() -> None:
    docs = [_state(1, "T1"), _state(3, "T1", status="ARCHIVED_OK"), _state(2, "T1"),
            _anomaly(1, "a1", 100), _anomaly(4, "a1", 100, resolved=200)]
    answers = _each_order(docs)
    assert all(a == answers[0] for a in answers)
    state, anomalies = answers[0]
    assert state["status"] == "ARCHIVED_OK" and state["year"] == 2025
    assert state["c_ms"] == 1_740_787_200_000 and state["f_ms"] is None
    assert [(a["anomaly_id"], a["opened"], a["resolved"]) for a in anomalies] == [
        ("a1", 100, 200)]
    assert anomalies[0]["detail"] == "a \"quoted\" / 值"


def test_a_newer_tombstone_removes_the_row_and_an_older_one_does_not() -> None:
    # the case moved from T1 to T2: T1's newest version is a tombstone
    got = current([_state(1, "T1"), _state(2, "T1", deleted=1), _state(3, "T2")])
    assert got.state is not None and got.state["task_id"] == "T2"
    got = current([_state(2, "T1", deleted=1), _state(3, "T1")])  # back again, newer
    assert got.state is not None and got.state["task_id"] == "T1"
    got = current([_anomaly(1, "a1", 100), _anomaly(2, "a1", 100, deleted=1)])
    assert got.anomalies == [] and got.state is None


def test_anomalies_are_ordered_by_opening_then_code_and_keyed_by_opening_too() -> None:
    # (opened, anomaly_id) is the row's identity in anomaly: one id opened twice is two rows
    got = current([_anomaly(1, "a2", 300), _anomaly(1, "a1", 100), _anomaly(2, "a1", 200)])
    assert [(a["anomaly_id"], a["opened"]) for a in got.anomalies] == [
        ("a1", 100), ("a1", 200), ("a2", 300)]


def test_no_rows_no_case() -> None:
    got = current([])
    assert got.state is None and got.anomalies == []
