"""The storage interface: thread safety, parameters, migrations."""

from __future__ import annotations

import threading

import pytest

from archwatch.engine import TABLE_KEYS
from archwatch.migrate import Migration, load_migrations, migrate, split_statements
from archwatch.store import VIEW_TARGETS, StoreError


def test_parameterised_queries_from_many_threads(store) -> None:
    """API worker threads query at once; each must get its own parameters back."""
    errors: list[str] = []

    def work(i: int) -> None:
        for j in range(40):
            try:
                rows = store.query("SELECT {a:String} AS a, {b:UInt32} AS b",
                                   {"a": f"t{i}", "b": j})
                if rows != [{"a": f"t{i}", "b": j}]:
                    errors.append(repr(rows))
            except StoreError as exc:
                errors.append(str(exc)[:100])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_inserts_and_queries_interleave_across_threads(store) -> None:
    migrate(store)
    done = threading.Event()

    def writer() -> None:
        for i in range(30):
            store.insert("audit_log", [{"at": f"{1700000000 + i}.000", "actor": "t",
                                        "action": "x", "target": str(i), "detail": ""}])
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        store.query("SELECT count() AS n FROM audit_log")
    t.join()
    assert store.query("SELECT count() AS n FROM audit_log")[0]["n"] == 30


def test_migrations_apply_once_and_refuse_edits(store, caplog) -> None:
    with caplog.at_level("INFO", logger="archwatch.migrate"):
        applied = migrate(store)
    assert applied == [m.name for m in load_migrations()]
    # each one applied now is announced, then timed (a backfill can take minutes)
    said = [r.getMessage() for r in caplog.records]
    assert said[:2] == [f"schema: applying {applied[0]}", said[1]]
    assert said[1].startswith(f"schema: applied {applied[0]} in ")
    assert len(said) == 2 * len(applied)
    caplog.clear()
    with caplog.at_level("INFO", logger="archwatch.migrate"):
        assert migrate(store) == []
    assert caplog.records == []  # nothing to apply, nothing said
    m = load_migrations()[0]
    edited = Migration(m.version, m.name, m.sql + "\n-- edited")
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = 1")
    store.insert("schema_migrations", [{"version": 1, "name": m.name, "checksum": "0" * 64}])
    with pytest.raises(Exception, match="changed after it was applied"):
        migrate(store)
    assert edited.checksum != m.checksum


def test_row_keys_are_the_migrated_sorting_keys(store) -> None:
    """The engine's tombstones, the restart reconcile and the harness's model of FINAL
    match rows by engine.TABLE_KEYS: they must be what the tables are ordered by."""
    migrate(store)
    keys = {r["name"]: r["sorting_key"] for r in store.query(
        "SELECT name, sorting_key FROM system.tables WHERE database = currentDatabase()")}
    assert {t: keys.get(t) for t in TABLE_KEYS} == {t: ", ".join(k) for t, k in TABLE_KEYS.items()}


def test_each_materialized_view_selects_its_target_s_columns(store) -> None:
    """A view inserts its SELECT's columns by name into its target: a column it does not
    give gets the default, silently; a type that does not match is converted, or the
    source's insert fails. So: the same names, in order, and the same types (up to
    LowCardinality, which only changes the storage)."""
    import re

    migrate(store)
    views = store.query("SELECT name, as_select, create_table_query FROM system.tables"
                        " WHERE database = currentDatabase() AND engine = 'MaterializedView'"
                        " ORDER BY name")
    # a new view: this test covers it
    assert [v["name"] for v in views] == ["case_doc_anomaly_mv", "case_doc_state_mv"]

    def strip(t: str) -> str:
        return re.sub(r"^LowCardinality\((.*)\)$", r"\1", t)

    # the read cache learns of a view's writes from its source's (store.VIEW_TARGETS)
    targets: dict[str, list[str]] = {}
    for v in views:
        source = re.search(r"\bFROM\s+(?:\w+\.)?(\w+)", v["as_select"]).group(1)
        target = re.search(r"\bTO\s+(?:\w+\.)?(\w+)", v["create_table_query"]).group(1)
        targets.setdefault(source, []).append(target)
    assert {k: tuple(sorted(v)) for k, v in targets.items()} == VIEW_TARGETS

    for v in views:
        target = re.search(r"\bTO\s+(?:\w+\.)?(\w+)", v["create_table_query"]).group(1)
        gives = [(c["name"], strip(c["type"]))
                 for c in store.query(f"DESCRIBE TABLE ({v['as_select']})")]
        wants = [(c["name"], strip(c["type"])) for c in store.query(f"DESCRIBE TABLE {target}")]
        assert gives == wants, v["name"]


def test_statement_splitting_respects_quotes_and_comments() -> None:
    sql = "SELECT 'a;b'; -- c; d\nSELECT \"x;\" /* ; */ ;\n\n"
    assert split_statements(sql) == ["SELECT 'a;b'", 'SELECT "x;"']


def test_parameters_carry_any_text(store) -> None:
    """Values reach ClickHouse as they are: newlines, tabs, backslashes, quotes, NUL
    (found by fuzzing the API: a newline in a path parameter made a 500)."""
    for v in ["a\nb", "back\\slash", "tab\tx", "q'uote", "nul\0x", "\\n literal", "中文"]:
        rows = store.query("SELECT {v:String} AS v, {a:Array(String)} AS a", {"v": v, "a": [v]})
        assert rows == [{"v": v, "a": [v]}]


def test_generation_moves_after_every_write_and_not_after_reads(store) -> None:
    migrate(store)
    g0 = store.generation()
    store.query("SELECT count() AS n FROM audit_log")
    store.query_text("WITH 1 AS x SELECT x", "CSV")
    assert store.generation() == g0
    store.insert("audit_log", [{"at": "1700000000.000", "actor": "t", "action": "x",
                                "target": "1", "detail": ""}])
    g1 = store.generation()
    assert g1 > g0
    store.command("TRUNCATE TABLE audit_log")
    assert store.generation() > g1
    g2 = store.generation()
    store.query_text("INSERT INTO audit_log (actor) VALUES ('q')", "CSV")  # a write via query
    assert store.generation() > g2
    with pytest.raises(StoreError):
        store.command("INSERT INTO no_such_table VALUES (1)")
    # a second object on the same directory in this process shares the count
    from archwatch.store import ChdbStore

    assert ChdbStore(store.path).generation() == store.generation()


def test_read_cache_answers_until_the_next_write_and_never_stale(store) -> None:
    from archwatch.store import ReadCache

    migrate(store)
    reads = ReadCache(store)
    sql = "SELECT count() AS n FROM audit_log WHERE actor = {a:String}"
    assert reads.query(sql, {"a": "t"}) == [{"n": 0}]
    assert reads.query(sql, {"a": "t"}) == [{"n": 0}] and reads.hits == 1
    assert reads.query(sql, {"a": "u"}) == [{"n": 0}] and reads.hits == 1  # other params
    store.insert("audit_log", [{"at": "1700000000.000", "actor": "t", "action": "x",
                                "target": "1", "detail": ""}])
    assert reads.query(sql, {"a": "t"}) == [{"n": 1}]

    # a write that lands while a read runs: that read's (older) answer must not be
    # filed under the generation after the write
    def read_then_write() -> list[dict]:
        rows = store.query(sql, {"a": "t"})
        store.insert("audit_log", [{"at": "1700000001.000", "actor": "t", "action": "x",
                                    "target": "2", "detail": ""}])
        return rows

    assert reads.get_or_compute(("racy",), read_then_write) == [{"n": 1}]
    assert reads.get_or_compute(("racy",), lambda: store.query(sql, {"a": "t"})) == [{"n": 2}]


def test_read_cache_keeps_answers_across_writes_to_other_tables(store) -> None:
    """Entries are keyed on the generations of the tables the read names: the dataflow's
    writes to other tables keep them; a write to the table, or to a table the store cannot
    tell (a raw statement), drops them; a read of a system table is never cached."""
    from archwatch.store import ReadCache, read_tables

    migrate(store)
    reads = ReadCache(store)
    sql = "SELECT count() AS n FROM audit_log WHERE actor = {a:String}"
    row = {"at": "1700000000.000", "actor": "t", "action": "x", "target": "1", "detail": ""}
    assert reads.query(sql, {"a": "t"}) == [{"n": 0}]
    store.command(
        "INSERT INTO kpi_item (year, qym, dept_code, system_code, task_id, system_level,"
        " version) VALUES (2025, '1', '', '', 't', '', 1)")
    assert reads.query(sql, {"a": "t"}) == [{"n": 0}] and reads.hits == 1  # other table
    store.command("INSERT INTO audit_log (at, actor, action, target, detail) VALUES"
                  " (1700000000, 't', 'x', '1', '')")
    assert reads.query(sql, {"a": "t"}) == [{"n": 1}] and reads.hits == 1  # this table
    store.insert("audit_log", [row])
    assert reads.query(sql, {"a": "t"}) == [{"n": 2}]
    store.command("SYSTEM FLUSH LOGS")  # no table the store can tell: every entry goes
    hits = reads.hits
    assert reads.query(sql, {"a": "t"}) == [{"n": 2}] and reads.hits == hits
    assert read_tables("SELECT * FROM system.parts") is None
    assert read_tables("SELECT 1") is None
    assert read_tables("SELECT a FROM x FINAL JOIN y USING (a) WHERE b IN (SELECT b FROM z)") \
        == {"x", "y", "z"}


def test_read_settings_apply_to_the_cache_s_queries_alone(store) -> None:
    """The API's reads run with its ``max_threads`` (api.deps.read_settings); the
    setting stays on their own connections, so no other query of the thread, cached or
    not, runs with it."""
    from archwatch.api.deps import read_settings
    from archwatch.api.settings import Settings

    from archwatch.store import ReadCache

    sql = "SELECT getSetting('max_threads') AS n"
    plain = store.query(sql)[0]["n"]
    reads = ReadCache(store, 16, {"max_threads": 13})
    assert reads.query(sql) == [{"n": 13}]
    assert store.query(sql) == [{"n": plain}]  # not leaked to the thread's connection
    assert ReadCache(store, 0, {"max_threads": 13}).query(sql) == [{"n": 13}]  # uncached too
    assert ReadCache(store).query(sql) == [{"n": plain}]
    assert read_settings(store, Settings()) == {
        "max_threads": 1, "output_format_parallel_formatting": 0}
    assert read_settings(store, Settings(read_max_threads=0)) == {
        "output_format_parallel_formatting": 0}


def test_read_cache_drops_a_view_s_target_with_its_source(store) -> None:
    """The trace reads case_doc, which only its views write (from each insert into
    case_state and anomaly): a write to a source must drop the copy's cached reads, or the
    trace would keep showing a case as it was (or not at all) until something else wrote."""
    from archwatch.casedoc import CASE_DOCS, current
    from archwatch.engine import case_row
    from archwatch.rules import CaseRow
    from archwatch.store import ReadCache

    migrate(store)
    for table in ("case_state", "case_doc"):
        store.command(f"TRUNCATE TABLE {table}")
    reads = ReadCache(store)

    def status() -> str | None:
        state = current(r["doc"] for r in reads.query(CASE_DOCS, {"c": "C1"})).state
        return None if state is None else state["status"]

    assert status() is None
    case = CaseRow("C1", "T1", "", "", "D", "", "330102", "", "S", "", "市",
                   1_740_787_200_000, None, 0, "PENDING", 2025)
    store.insert("case_state", [case_row(case, "c001", 1)])
    assert status() == "PENDING"
    store.insert("case_state", [case_row(case._replace(status="ARCHIVED_OK"), "c001", 2)])
    assert status() == "ARCHIVED_OK"


def test_read_cache_off_for_size_zero_and_for_stores_without_generation(store) -> None:
    from archwatch.store import ReadCache

    calls = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    off = ReadCache(store, size=0)
    assert [off.get_or_compute("k", compute) for _ in range(2)] == [1, 2]

    class Elsewhere:  # a server store: written by other processes
        def generation(self, tables: object = None) -> None:
            return None

    blind = ReadCache(Elsewhere())  # type: ignore[arg-type]
    assert [blind.get_or_compute("k", compute) for _ in range(2)] == [3, 4]
    small = ReadCache(store, size=2)
    for k in ("a", "b", "c"):
        small.get_or_compute(k, compute)
    assert len(small._entries) == 2


_ROWS_TABLE = ("CREATE TABLE rows_t (a Int32, b String, c Array(String) DEFAULT ['d'], "
               "n Nullable(Int64)) ENGINE = MergeTree ORDER BY a")


def check_insert_shapes(store) -> None:  # noqa: ANN001 - a Store of either backend
    """Uniform rows (sent as JSONCompactColumns), mixed rows and rows with a key the table
    lacks (JSONEachRow) all store what JSONEachRow lines of the same dicts would."""
    store.insert("rows_t", [{"a": 1, "b": 'q"\\\n\t€', "c": ["x", "y"], "n": None},
                            {"a": 2, "b": "", "c": [], "n": 2**62}])
    store.insert("rows_t", [{"a": 3, "b": "z"}, {"b": "w", "a": 4}])  # order differs
    store.insert("rows_t", [{"a": 5, "b": "u"}, {"a": 6}])  # a column left to its default
    store.insert("rows_t", [{"a": 7, "b": "v", "zz": 1}, {"a": 8, "b": "v", "zz": 2}])
    store.insert("rows_t", ({"a": i, "b": str(i)} for i in (9, 10)))  # any iterable
    store.insert("rows_t", [])
    assert store.query("SELECT a, b, c, n FROM rows_t ORDER BY a") == [
        {"a": 1, "b": 'q"\\\n\t€', "c": ["x", "y"], "n": None},
        {"a": 2, "b": "", "c": [], "n": 2**62},
        {"a": 3, "b": "z", "c": ["d"], "n": None}, {"a": 4, "b": "w", "c": ["d"], "n": None},
        {"a": 5, "b": "u", "c": ["d"], "n": None}, {"a": 6, "b": "", "c": ["d"], "n": None},
        {"a": 7, "b": "v", "c": ["d"], "n": None}, {"a": 8, "b": "v", "c": ["d"], "n": None},
        {"a": 9, "b": "9", "c": ["d"], "n": None}, {"a": 10, "b": "10", "c": ["d"], "n": None},
    ]


def test_insert_shapes_store_the_same_as_json_rows(store) -> None:
    store.command(_ROWS_TABLE)
    check_insert_shapes(store)


def test_open_anomaly_gauge_follows_the_shards_counts(store) -> None:
    """The live run's gauge sums anomaly_count (not a count of every anomaly), and a code
    whose anomalies are all gone reads 0 instead of keeping its last value."""
    import threading
    import time

    from prometheus_client import REGISTRY

    from archwatch.metrics import watch_open_anomalies

    migrate(store)
    row = {"code": "NOT_CHECKED", "class": "漏", "qym": "330102", "dept_code": "D",
           "system_code": "S", "src": "c001", "total": 5, "open": 3, "version": 1,
           "is_deleted": 0}
    store.insert("anomaly_count", [row, {**row, "src": "c002", "open": 1}])
    def gauge() -> float | None:
        return REGISTRY.get_sample_value("archwatch_open_anomalies", {"code": "NOT_CHECKED"})

    stop = threading.Event()
    watcher = threading.Thread(target=watch_open_anomalies, args=(store, stop, 0.01))
    watcher.start()
    try:
        for want, change in ((4.0, [{**row, "version": 2, "is_deleted": 1},
                                    {**row, "src": "c002", "version": 2, "is_deleted": 1}]),
                             (0.0, None)):
            deadline = time.monotonic() + 10
            while gauge() != want:
                assert time.monotonic() < deadline, (want, gauge())
                time.sleep(0.01)
            if change:
                store.insert("anomaly_count", change)
    finally:
        stop.set()
        watcher.join()


def test_sink_times_its_writes_and_each_rows_way_to_the_store(store, tmp_path) -> None:
    """A replay's sink observes every INSERT (per table, and kpi_item's refresh) and, per
    write, the time from its oldest row entering the buffer to the write's end."""
    from prometheus_client import REGISTRY

    from tests.conftest import GOLDEN, replay_into, scenario_settings

    def count(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    tables = ("event_log", "case_state", "kpi_task", "kpi_item")
    before = {t: count("archwatch_store_write_seconds_count", {"table": t}) for t in tables}
    delays = count("archwatch_sink_delay_seconds_count")
    delay_sum = count("archwatch_sink_delay_seconds_sum")
    name = "kpi-rollup"
    files = sorted((GOLDEN / name).glob("*.jsonl"))
    replay_into(store, files, scenario_settings(name), tmp_path)
    for t in tables:
        assert count("archwatch_store_write_seconds_count", {"table": t}) > before[t], t
    n = count("archwatch_sink_delay_seconds_count") - delays
    assert n >= 1
    # a replay's buffer waits for its flush delay (2 s) or the end of input: never negative
    assert count("archwatch_sink_delay_seconds_sum") - delay_sum > 0
