"""Every contract scenario, through the real dataflow into a real chDB store."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from tests.conftest import (
    GOLDEN,
    SCENARIOS,
    SHARED_GOLDEN,
    comparable_anomalies,
    replay_into,
    scenario_settings,
)


def test_scenarios_present() -> None:
    assert len(SCENARIOS) >= 12


@pytest.mark.skipif(not SHARED_GOLDEN.is_dir(), reason="no ../shared beside this clone")
def test_copy_equals_shared() -> None:
    """The scenarios copied into tests/ are still byte-identical to ../shared's."""
    shared = sorted(p.name for p in SHARED_GOLDEN.iterdir() if p.is_dir())
    assert shared == SCENARIOS
    for name in shared:
        cmp = filecmp.dircmp(SHARED_GOLDEN / name, GOLDEN / name)
        assert not (cmp.left_only or cmp.right_only or cmp.diff_files), name
        for f in (SHARED_GOLDEN / name).iterdir():
            assert f.read_bytes() == (GOLDEN / name / f.name).read_bytes(), f
    assert (SHARED_GOLDEN / "README.md").read_bytes() == (GOLDEN / "README.md").read_bytes()


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_scenario(name: str, store, tmp_path: Path) -> None:
    expected = json.loads((GOLDEN / name / "expected.json").read_text())
    got = replay_into(store, [GOLDEN / name / "events.jsonl"], scenario_settings(name), tmp_path)
    assert got["counts"] == expected["counts"]
    assert got["summary"] == expected["summary"]
    assert comparable_anomalies(got["anomalies"]) == comparable_anomalies(expected["anomalies"])
    assert got["cases"] == expected["cases"]
    assert got["kpi"] == expected["kpi"]


def test_rejects_file_keeps_reason_line_and_position(store, tmp_path: Path) -> None:
    replay_into(store, [GOLDEN / "rejects" / "events.jsonl"], scenario_settings("rejects"),
                tmp_path)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 6
    raw_lines = (GOLDEN / "rejects" / "events.jsonl").read_text().splitlines()
    for r in rejects:
        path, line = r["position"].rsplit(":", 1)
        assert Path(path).name == "events.jsonl"
        assert raw_lines[int(line) - 1] == r["raw"]
        assert r["reason"]
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "not valid JSON" in reasons
    assert "unknown event type 'case.reopened'" in reasons
    assert "RFC 3339" in reasons
    assert "passed" in reasons
    assert "not a JSON object" in reasons


def test_reused_event_id_is_rejected_with_reason(store, tmp_path: Path) -> None:
    replay_into(store, [GOLDEN / "edges" / "events.jsonl"], scenario_settings("edges"), tmp_path)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["eventId reused"]
    assert '"dddd' in rejects[0]["raw"]  # the second copy is the one rejected
