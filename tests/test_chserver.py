"""`archwatch store-server`: the embedded store behind ClickHouse's HTTP protocol, spoken
to by the project's own server backend (clickhouse-connect) as a cluster's processes do."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from archwatch import report
from archwatch.casedoc import CASE_DOCS, current
from archwatch.chserver import create_app
from archwatch.migrate import migrate
from archwatch.store import ChdbStore, ServerStore, StoreError
from tests.conftest import GOLDEN, comparable_anomalies, replay_into, scenario_settings
from tests.kafka_helpers import serve_app

PASSWORD = "s3cret"


@pytest.fixture
def served(store: ChdbStore) -> Iterator[tuple[ChdbStore, str]]:
    migrate(store)
    with serve_app(create_app(store, "archwatch", PASSWORD)) as base:
        yield store, base


@pytest.mark.parametrize("name", ["duplicates", "heartbeats", "late-evidence"])
def test_golden_scenarios_through_the_server(served: tuple[ChdbStore, str], name: str,
                                             tmp_path: Any) -> None:
    """The whole engine writes through clickhouse-connect and gets the contract's answer;
    what it wrote is what the embedded store holds."""
    store, base = served
    remote = ServerStore(base.replace("http://", f"http://archwatch:{PASSWORD}@") + "/")
    expected = json.loads((GOLDEN / name / "expected.json").read_text())
    got = replay_into(remote, [GOLDEN / name / "events.jsonl"], scenario_settings(name),
                      tmp_path)
    # the case trace's rows (case_doc, 0018) rendered by the server's views read back
    # through clickhouse-connect as through chDB, and say what case_state FINAL says
    cases = store.query("SELECT case_no, status FROM case_state FINAL ORDER BY case_no")
    assert cases or name == "heartbeats"  # (receivers only)
    for row in cases:
        docs = current(r["doc"] for r in remote.query(CASE_DOCS, {"c": row["case_no"]}))
        assert docs == current(r["doc"] for r in store.query(CASE_DOCS, {"c": row["case_no"]}))
        assert docs.state is not None and docs.state["status"] == row["status"]
    remote.close()
    assert got["summary"] == expected["summary"]
    assert comparable_anomalies(got["anomalies"]) == comparable_anomalies(expected["anomalies"])
    assert got["cases"] == expected["cases"] and got["kpi"] == expected["kpi"]
    assert report.full(store)["anomalies"] == got["anomalies"]


def test_refuses_wrong_credentials_and_answers_clickhouse_style_errors(
        served: tuple[ChdbStore, str]) -> None:
    _store, base = served
    r = httpx.post(base + "/", content="SELECT 1", auth=("archwatch", "wrong"))
    assert r.status_code == 401 and r.headers["X-ClickHouse-Exception-Code"] == "516"
    r = httpx.post(base + "/", content="SELECT nope", auth=("archwatch", PASSWORD))
    assert r.status_code == 500 and r.text.startswith("Code: 47. DB::Exception:")
    assert "Stack trace" not in r.text
    r = httpx.post(base + "/?bad-name=1", content="SELECT 1", auth=("archwatch", PASSWORD))
    assert r.status_code == 400
    r = httpx.post(base + "/", content=b"\x00not gzip", auth=("archwatch", PASSWORD),
                   headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "cannot decode" in r.text
    assert httpx.get(base + "/ping").text == "Ok.\n"


def test_compressed_inserts_and_settings_that_do_not_leak(
        served: tuple[ChdbStore, str]) -> None:
    _store, base = served
    auth = ("archwatch", PASSWORD)
    row = ('{"entity":"c1","occurred_at":"2025-01-01 00:00:00.000","event_id":"e1",'
           '"type":"case.completed","archive_no":"","source":"t","payload":"{}"}\n')
    r = httpx.post(base + "/?query=INSERT%20INTO%20event_log%20FORMAT%20JSONEachRow",
                   content=gzip.compress(row.encode()), auth=auth,
                   headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    q = "SELECT getSetting('max_result_rows') FORMAT TSV"
    assert httpx.post(base + "/?max_result_rows=7", content=q, auth=auth).text == "7\n"
    assert httpx.post(base + "/", content=q, auth=auth).text == "0\n"  # not this request's
    r = httpx.post(base + "/?param_id=e1", auth=auth,
                   content="SELECT count() FROM event_log WHERE event_id = {id:String} FORMAT TSV")
    assert r.text == "1\n"


def test_server_store_errors_carry_clickhouse_messages(served: tuple[ChdbStore, str]) -> None:
    _store, base = served
    remote = ServerStore(base.replace("http://", f"http://archwatch:{PASSWORD}@") + "/")
    with pytest.raises(StoreError, match="UNKNOWN_TABLE|Unknown table"):
        remote.query("SELECT * FROM no_such_table")
    remote.close()


def test_server_store_inserts_every_row_shape(served: tuple[ChdbStore, str]) -> None:
    """The columnar insert and its JSONEachRow fallback through clickhouse-connect."""
    from tests.test_store import _ROWS_TABLE, check_insert_shapes

    _store, base = served
    remote = ServerStore(base.replace("http://", f"http://archwatch:{PASSWORD}@") + "/")
    remote.command(_ROWS_TABLE)
    check_insert_shapes(remote)
    remote.close()
