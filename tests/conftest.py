"""Shared fixtures: golden scenarios, fresh chDB stores, replay helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archwatch import report, rollup
from archwatch.receivers import load_registrations
from archwatch.replay import replay
from archwatch.rules import Sla
from archwatch.settings import EngineSettings
from archwatch.store import ChdbStore, open_store
from archwatch.timeutil import parse_ts

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "contract" / "golden"
SHARED_GOLDEN = ROOT.parent / "shared" / "contract" / "golden"
SCENARIOS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def scenario_settings(name: str, **overrides: Any) -> EngineSettings:
    d = GOLDEN / name
    cfg = json.loads((d / "replay.json").read_text())
    sla = Sla.from_iso(**{k: v for k, v in cfg.items() if k not in ("asOf", "receivers")})
    regs = load_registrations(d / cfg["receivers"]) if "receivers" in cfg else {}
    kwargs: dict[str, Any] = {"sla": sla, "as_of": parse_ts(cfg["asOf"]), "receivers": regs}
    kwargs.update(overrides)
    return EngineSettings(**kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbStore]:
    s = open_store(tmp_path / "db")
    assert isinstance(s, ChdbStore)
    yield s
    s.close()


def replay_into(store: Any, files: list[Path], settings: EngineSettings,
                tmp_path: Path) -> dict[str, Any]:
    res = replay(files, store, settings, tmp_path / "rejects.jsonl", progress=False)
    assert rollup.differences(store) == []  # kpi_item is the sum of kpi_task's partials
    assert rollup.count_differences(store) == []  # anomaly_count counts the anomalies
    return report.full(store, res.report())


def comparable_anomalies(rows: list[dict[str, Any]]) -> list[str]:
    """Anomalies as sorted canonical strings, without the engine-chosen id and detail."""
    keys = ("code", "caseNo", "archiveNo", "receiverId", "qym", "deptCode", "systemCode",
            "taskCode", "openedAt", "resolvedAt")
    out = []
    for a in rows:
        item = {k: a.get(k) for k in keys}
        for t in ("openedAt", "resolvedAt"):
            if item[t] is not None:
                item[t] = parse_ts(item[t])  # compare as instants
        out.append(json.dumps(item, sort_keys=True, ensure_ascii=False))
    return sorted(out)


def workload_store(root: Path, cases: int, seed: int, anomaly_rate: float) -> tuple[Any, dict]:
    """A generated workload replayed by the real dataflow into a fresh chDB store, with
    the schema migrated (accounts too); returns the open store and the ground truth."""
    from archwatch.generate import GenerateOptions, generate
    from archwatch.migrate import migrate

    truth = generate(root / "w", GenerateOptions(cases=cases, seed=seed,
                                                 anomaly_rate=anomaly_rate, heartbeat_hours=1))
    store = open_store(root / "db")
    replay([root / "w" / "events.jsonl"], store,
           EngineSettings(as_of=parse_ts(truth["asOf"]),
                          receivers=load_registrations(root / "w" / "receivers.json")),
           root / "rejects.jsonl", progress=False)
    migrate(store)
    return store, truth


def log_in(client: Any, store: Any, username: str = "city") -> None:
    """Open a city-wide account on ``store`` and send its bearer token with every request
    of ``client`` (a FastAPI TestClient)."""
    from archwatch.accounts import Accounts, Role

    _, password = Accounts(store).create(username, Role.city)
    token = client.post("/api/v1/auth/login",
                        json={"username": username, "password": password}).json()
    client.headers["Authorization"] = f"Bearer {token['accessToken']}"
