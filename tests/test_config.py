"""One configuration file plus environment variables, validated at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archwatch.config import ConfigError, load
from tests.conftest import GOLDEN

EDGES = GOLDEN / "edges"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHWATCH_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "archwatch.cli", *args], capture_output=True,
                          text=True, timeout=300, env=full_env)


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "archwatch.toml"
    cfg.write_text(f'[archwatch]\ndb = "{tmp_path / "from-file"}"\narchive_sla = "P1D"\n')
    # the file alone: with a one-day archive SLA every edges case misses it (704 late)
    out = run("--config", str(cfg), "replay", str(EDGES / "events.jsonl"),
              "--as-of", "2022-03-31T10:00:00+08:00")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "from-file").is_dir()
    missing = run("sql", "--config", str(cfg),
                  "SELECT count() FROM anomaly FINAL WHERE code = 'MISSING_ARCHIVE' FORMAT TSV")
    assert int(missing.stdout) == 4
    # the environment beats the file, and a flag beats both
    env = {"ARCHWATCH_DB": str(tmp_path / "from-env"), "ARCHWATCH_ARCHIVE_SLA": "P30D"}
    out = run("replay", str(EDGES / "events.jsonl"), "--config", str(cfg), "--as-of",
              "2022-03-31T10:00:00+08:00", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["applied"] == 9
    got = run("sql", "--db", str(tmp_path / "from-env"),
              "SELECT count() FROM anomaly FINAL WHERE code = 'MISSING_ARCHIVE' FORMAT TSV")
    assert int(got.stdout) == 1  # the golden answer under P30D


@pytest.mark.parametrize("text,message", [
    ('archive_sla = "30 days"', "archive_sla: not an ISO 8601 duration"),
    ("prot = 8000", "prot: unknown key"),
    ("port = 99999", "port: Input should be less than or equal to 65535"),
    ('receivers = "/nonexistent.json"', "receivers: no such file"),
    ("db = ", "not valid TOML"),
])
def test_bad_configuration_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load(cfg, environ={})
    out = run("--config", str(cfg), "sql", "SELECT 1")
    assert out.returncode == 2 and message.split(":")[0] in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="environment: workers"):
        load(None, environ={"ARCHWATCH_WORKERS": "zero"})
