"""The in-memory ``kpi_item`` (archwatch.api.kpicube) gives exactly the SQL's answers, and
is used only while it is the table's current content."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archwatch.api import kpicube
from archwatch.api.queries import DIMENSIONS, SORTS, KpiQuery, kpi_groups
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archwatch.migrate import migrate
from archwatch.store import ChdbStore, ReadCache, open_store

YEARS = (2024, 2025, 2026)
REGIONS = ("330102", "330105", "330106")
DEPTS = ("001008001", "001008002", "001008003", "001008004")
SYSTEMS = (("S01", "国"), ("S02", "省"), ("S03", "市"))
TASKS = tuple(f"T{i:03d}" for i in range(12))


def _row(rng: random.Random, version: int, deleted: int = 0, **fixed: Any) -> dict[str, Any]:
    system, level = rng.choice(SYSTEMS)
    row = {"year": rng.choice(YEARS), "qym": rng.choice(REGIONS), "dept_code": rng.choice(DEPTS),
           "system_code": system, "system_level": level, "task_id": rng.choice(TASKS)}
    row.update(fixed)
    kpi = rng.choice((0, 1, 2, 3, 5, 8))  # small numbers: many ties between groups
    archived = rng.randint(0, kpi)
    fail = rng.randint(0, archived)
    row.update(
        area=f"区{row['qym']}", dept_name=f"部门{row['dept_code']}",
        system_name=f"系统{row['system_code']}", task_code=row["task_id"].lower(),
        task_name=f"事项{row['task_id']}", kpi=kpi, archived=archived,
        archived_succ=archived - fail, archived_fail=fail,
        cycle_ms_sum=archived * rng.choice((0, 86_400_000, 3 * 86_400_000)),
        last_receive=(None if rng.random() < 0.3 else
                      f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 08:00:00.{rng.randint(0, 999):03d}"),
        last_update=f"2025-10-{rng.randint(10, 28)} 09:00:00", version=version,
        is_deleted=deleted)
    return row


def _fill(store: ChdbStore, seed: int) -> None:
    """Rows in several parts, later versions replacing earlier ones and tombstones, so
    that FINAL has work to do."""
    rng = random.Random(seed)
    first = [_row(rng, 1) for _ in range(400)]
    store.insert("kpi_item", first)
    again = [_row(rng, 2, **{k: r[k] for k in ("year", "qym", "dept_code", "system_code",
                                                "system_level", "task_id")})
             for r in rng.sample(first, 80)]
    store.insert("kpi_item", again)
    gone = [dict(r, version=3, is_deleted=1) for r in rng.sample(first, 40)]
    store.insert("kpi_item", gone + [_row(rng, 3) for _ in range(60)])


@pytest.fixture(params=[1, 2])
def filled(request: pytest.FixtureRequest, tmp_path: Path
           ) -> Iterator[tuple[ChdbStore, kpicube.KpiCube]]:
    store = open_store(tmp_path / "db")
    assert isinstance(store, ChdbStore)
    migrate(store)
    _fill(store, request.param)
    cube = kpicube.KpiCube.load(store)
    assert cube is not None and len(cube.rows) > 300
    yield store, cube
    store.close()


_FILTER_VALUES: dict[str, tuple[Any, ...]] = {
    "year": (*YEARS, 2023), "qym": (*REGIONS, "339999"), "deptCode": DEPTS,
    "systemCode": tuple(s for s, _ in SYSTEMS), "systemLevel": ("国", "省", "市"),
    "taskId": TASKS[:4],
}

queries = st.builds(
    KpiQuery,
    group_by=st.lists(st.sampled_from(list(DIMENSIONS)), max_size=3, unique=True),
    filters=st.fixed_dictionaries({}, optional={d: st.one_of(st.none(), st.sampled_from(v))
                                                 for d, v in _FILTER_VALUES.items()}),
    sort=st.sampled_from(list(SORTS)),
    desc=st.booleans(),
    limit=st.sampled_from((1, 3, 10, 100)),
    offset=st.sampled_from((0, 2, 7, 500)),
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queries)
def test_cube_answers_as_the_sql(filled: tuple[ChdbStore, kpicube.KpiCube], q: KpiQuery
                                 ) -> None:
    store, cube = filled
    # the store itself is not a ReadCache: kpi_groups runs its SQL
    assert kpi_groups(store, q) == _api_groups(cube, q)


def _api_groups(cube: kpicube.KpiCube, q: KpiQuery) -> tuple[list[dict[str, Any]], int]:
    from archwatch.api.queries import _group_of

    rows, total = cube.groups(q)
    return [_group_of(r, q) for r in rows], total


def test_key_order_descending_orders_every_group_column(
        filled: tuple[ChdbStore, kpicube.KpiCube]) -> None:
    """order=desc with sort=key: the first group column descends too (the SQL once put
    DESC on the last column only)."""
    store, _ = filled
    rows, _ = kpi_groups(store, KpiQuery(["year", "qym"], {}, "key", True, 100, 0))
    keys = [(int(r["key"]["year"]), r["key"]["qym"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert len({y for y, _ in keys}) > 1


def test_reads_use_the_cube_of_the_current_generation_only(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    migrate(store)
    _fill(store, 3)
    reads = ReadCache(store)
    q = KpiQuery(["qym"], {"year": 2025}, "kpi", True, 10, 0)
    assert kpicube.cube_of(reads) is None  # a load starts; the read goes to the store
    cube = kpicube.cube_of(reads, wait=True)
    assert cube is not None
    assert kpicube.cube_of(reads) is cube  # held while kpi_item is unchanged
    before = kpi_groups(reads, q)
    assert before == kpi_groups(store, q)
    # a write elsewhere keeps it; a write to kpi_item retires it at once
    store.wrote("case_state")
    assert kpicube.cube_of(reads) is cube
    store.insert("kpi_item", [_row(random.Random(9), 5, year=2025, qym="330102")])
    assert kpicube.cube_of(reads) is None  # the new generation's cube is still loading
    after = kpi_groups(reads, q)  # answered by SQL meanwhile: the write is in it
    assert after != before and after == kpi_groups(store, q)
    fresh = kpicube.cube_of(reads, wait=True)
    assert fresh is not None and fresh is not cube
    assert _api_groups(fresh, q) == after
    store.close()


def test_no_cube_where_reads_are_not_cached(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path / "db")
    migrate(store)
    _fill(store, 4)
    q = KpiQuery(["systemCode", "systemLevel"], {"year": 2026}, "key", False, 10, 0)
    want = kpi_groups(store, q)
    assert kpicube.cube_of(ReadCache(store, size=0), wait=True) is None  # cache off
    monkeypatch.setattr(store, "generation", lambda tables=None: None)  # others write
    assert kpicube.cube_of(ReadCache(store), wait=True) is None
    monkeypatch.undo()
    monkeypatch.setattr(kpicube, "MAX_ROWS", 100)  # too large to hold
    reads = ReadCache(store)
    assert kpicube.cube_of(reads, wait=True) is None
    assert kpi_groups(reads, q) == want
    monkeypatch.undo()
    reads = ReadCache(store)
    kpicube.hold(reads, 0)  # the API's setting kpi_cube_rows=0
    assert kpicube.cube_of(reads, wait=True) is None
    kpicube.hold(reads, 10_000)
    assert kpicube.cube_of(reads, wait=True) is not None
    store.close()


def test_api_answers_the_same_before_and_after_the_cube_loads(tmp_path: Path) -> None:
    """Through the app, the responses from the store and from the cube are the same."""
    from archwatch.api.app import create_app
    from archwatch.api.settings import Settings
    from fastapi.testclient import TestClient

    from tests.conftest import log_in

    store = open_store(tmp_path / "db")
    migrate(store)
    _fill(store, 5)
    app = create_app(Settings(rate_burst=100_000, rate_per_second=100_000), store=store)
    paths = ["/gdtjapi/charts/sysView?year=2025",
             "/gdtjapi/charts/taskArchiveList?qym=330102&deptCode=001008002&year=2024",
             "/api/v1/stats?groupBy=year,qym&sort=archiveRate&order=desc&pageSize=50",
             "/api/v1/drill/regions/330105/departments?year=2026&sort=timeDiff",
             "/api/v1/drill/levels/市/systems?year=2025"]
    with TestClient(app) as client:
        log_in(client, store)
        app.state.principals.clear()

        def answers() -> list[Any]:
            out = []
            for path in paths:
                r = client.get(path)
                assert r.status_code == 200, r.text
                body = r.json()
                for k in ("timestamp", "executeTime"):
                    body.pop(k, None)
                out.append(body)
            return out

        client.get(paths[0])  # the app makes its ReadCache
        reads = app.state.reads
        kpicube.hold(reads, 0)  # every read to the store (kpi_cube_rows=0)...
        by_sql = answers()
        assert kpicube.cube_of(reads) is None
        kpicube.hold(reads, 10_000)  # ... then from the cube
        assert kpicube.cube_of(reads, wait=True) is not None
        assert answers() == by_sql
        assert any(body.get("total") or body.get("data", {}).get("total") for body in by_sql)
    store.close()


def test_item_case_lists_are_the_same_with_prefixes_from_the_cube(tmp_path: Path) -> None:
    """An item's case list finds its key prefixes (and, without a status filter, its total)
    in the cube instead of case_state: on a replayed workload the prefixes are exactly
    those of the item's current cases, and the lists (region and system chains, with and
    without a year, a page past the end, a status) are equal."""
    from archwatch.api.app import create_app
    from archwatch.api.settings import Settings
    from fastapi.testclient import TestClient

    from tests.conftest import log_in, workload_store

    store, _truth = workload_store(tmp_path, 600, 17, 0.3)
    cube = kpicube.KpiCube.load(store)
    assert cube is not None
    current = store.query("SELECT DISTINCT task_id, year, qym, dept_code, system_code"
                          " FROM case_state FINAL")
    items = sorted({r["task_id"] for r in current})
    assert len(items) > 5
    for task in items:
        mine = [r for r in current if r["task_id"] == task]
        for year in (None, mine[0]["year"]):
            want = [r for r in mine if year is None or r["year"] == year]
            assert cube.item_prefixes(task, year) == {
                "k_year": sorted({r["year"] for r in want}),
                "k_qym": sorted({r["qym"] for r in want}),
                "k_dept": sorted({r["dept_code"] for r in want})}
    app = create_app(Settings(rate_burst=100_000, rate_per_second=100_000), store=store)
    paths = []
    for task in items[:6]:
        r = next(r for r in current if r["task_id"] == task)
        paths += [f"/api/v1/drill/items/{task}/cases?pageSize=50",
                  f"/api/v1/drill/items/{task}/cases?year={r['year']}&sort=completedAt",
                  f"/api/v1/drill/items/{task}/cases?systemCode={r['system_code']}",
                  f"/api/v1/drill/items/{task}/cases?qym={r['qym']}&deptCode={r['dept_code']}"
                  "&pageSize=3&pageNo=2",
                  f"/api/v1/drill/items/{task}/cases?status=MISSING",
                  f"/api/v1/drill/items/{task}/cases?pageNo=99"]
    with TestClient(app) as client:
        log_in(client, store)
        client.get(paths[0])
        reads = app.state.reads

        def answers() -> list[Any]:
            out = []
            for path in paths:
                r = client.get(path)
                assert r.status_code == 200, r.text
                out.append(r.json())
            return out

        kpicube.hold(reads, 0)
        by_sql = answers()
        kpicube.hold(reads, 100_000)
        assert kpicube.cube_of(reads, wait=True) is not None
        assert answers() == by_sql
        assert all(body["total"] > 0 for body in by_sql[0::6])  # each item's whole list
        # a page past the end reports 0, as before
        assert all(body["total"] == 0 and body["items"] == [] for body in by_sql[5::6])
    store.close()


def test_loads_are_spaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a load, the next starts no sooner than MIN_RELOAD_S (and RELOAD_GAP times its
    duration) later, however often kpi_item changes; reads use the store meanwhile."""
    from types import SimpleNamespace

    store = open_store(tmp_path / "db")
    migrate(store)
    _fill(store, 6)
    now = [1000.0]  # a frozen clock: the loads take no time on it
    monkeypatch.setattr(kpicube, "time", SimpleNamespace(monotonic=lambda: now[0]))
    reads = ReadCache(store)
    assert kpicube.cube_of(reads, wait=True) is not None
    store.insert("kpi_item", [_row(random.Random(1), 7)])
    now[0] += kpicube.MIN_RELOAD_S - 0.01
    assert kpicube.cube_of(reads) is None
    assert kpicube._HELD[reads].loader is None  # within the gap: no load started
    now[0] += 0.01
    assert kpicube.cube_of(reads) is None  # due: a load starts, this read used the store
    loader = kpicube._HELD[reads].loader
    assert loader is not None
    loader.result()
    assert kpicube.cube_of(reads) is not None
    store.close()
