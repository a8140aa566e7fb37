"""`archwatch replay` and `archwatch sql` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import GOLDEN

ARCHWATCH = [sys.executable, "-m", "archwatch.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*ARCHWATCH, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_replay_prints_counts_and_sql_reads_the_store(tmp_path: Path) -> None:
    db = tmp_path / "db"
    d = GOLDEN / "duplicates"
    out = run("replay", str(d / "events.jsonl"), "--db", str(db), "--as-of",
              "2022-03-03T10:00:00+08:00", "--archive-sla", "P30D", "--check-sla", "P30D",
              "--backup-sla", "P30D", "--distribution-sla", "P30D")
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads((d / "expected.json").read_text())["counts"]
    assert list(json.loads(lines[-1])) == ["read", "applied", "duplicate", "rejected",
                                           "afterAsOf"]
    csv = run("sql", "--db", str(db),
              "SELECT code, count() FROM anomaly FINAL GROUP BY code ORDER BY code FORMAT CSV")
    assert csv.stdout.splitlines() == ['"ARCHIVE_NO_CONFLICT",1', '"DUPLICATE_ARCHIVE",1',
                                       '"DUPLICATE_RECEIPT",1']
    table = run("sql", "--db", str(db), "SELECT case_no, status FROM case_state FINAL "
                "ORDER BY case_no")
    assert "HZ2022030100010" in table.stdout and "─" in table.stdout  # a readable table
    js = run("sql", "--db", str(db), "SELECT sum(kpi) AS k FROM kpi_task FINAL",
             "--format", "JSONEachRow")
    assert json.loads(js.stdout) == {"k": 2}


def test_sql_is_read_only_and_errors_are_one_line(tmp_path: Path) -> None:
    db = tmp_path / "db"
    run("replay", str(GOLDEN / "on-time" / "events.jsonl"), "--db", str(db))
    for stmt in ("DROP TABLE anomaly", "INSERT INTO anomaly (anomaly_id) VALUES ('x')",
                 "ALTER TABLE case_state DELETE WHERE 1"):
        proc = run("sql", "--db", str(db), stmt, check=False)
        assert proc.returncode == 2
        assert "readonly" in proc.stderr.lower()
        assert "Traceback" not in proc.stderr
    assert run("sql", "--db", str(db), "SELECT count() FROM anomaly FINAL FORMAT CSV"
               ).stdout.strip() == "0"
    bad = run("sql", "--db", str(db), "SELEC 1", check=False)
    assert bad.returncode == 2 and "Syntax error" in bad.stderr and "Traceback" not in bad.stderr
    missing = run("sql", "--db", str(tmp_path / "nope"), "SELECT 1", check=False)
    assert missing.returncode == 2 and "no store" in missing.stderr


def test_replay_refuses_bad_arguments_clearly(tmp_path: Path) -> None:
    proc = run("replay", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "db"),
               check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run("replay", str(GOLDEN / "on-time" / "events.jsonl"), "--db",
               str(tmp_path / "db"), "--lateness", "5 minutes", check=False)
    assert proc.returncode == 2 and "ISO 8601" in proc.stderr
    proc = run("replay", str(GOLDEN / "on-time" / "events.jsonl"), "--db",
               str(tmp_path / "db"), "--as-of", "2022-03-01 10:00", check=False)
    assert proc.returncode == 2 and "RFC 3339" in proc.stderr


def test_blank_lines_are_skipped_and_not_counted(tmp_path: Path) -> None:
    src = (GOLDEN / "on-time" / "events.jsonl").read_text().splitlines()
    f = tmp_path / "gappy.jsonl"
    f.write_text("\n\n".join(src) + "\n   \n")
    out = run("replay", str(f), "--db", str(tmp_path / "db"))
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["read"] == 7 and counts["applied"] == 7


def test_generate_is_deterministic_and_reports(tmp_path: Path) -> None:
    out = run("generate", "--out", str(tmp_path / "w"), "--cases", "300", "--seed", "4")
    info = json.loads(out.stdout)
    assert info["cases"] == 300 and info["events"] > 300 * 5
    truth = json.loads((tmp_path / "w" / "truth.json").read_text())
    assert truth["counts"]["read"] == info["events"]


def test_cluster_and_store_server_flags_are_checked_before_anything_starts(
        tmp_path: Path) -> None:
    """A cluster needs --url (the processes share one store), a valid -i, and a
    store-server needs a password; each refusal is one line, exit 2."""
    base = ("run", "--brokers", "127.0.0.1:1", "--timeout", "0.1")
    proc = run(*base, "--db", str(tmp_path / "db"), "-a", "h:1,h:2", "-i", "0", check=False)
    assert proc.returncode == 2 and "store-server" in proc.stderr
    proc = run(*base, "--url", "http://x:y@127.0.0.1:1/", "-a", "h:1,h:2", "-i", "2",
               check=False)
    assert proc.returncode == 2 and "--process-id 2" in proc.stderr
    proc = run(*base, "--url", "http://x:y@127.0.0.1:1/", "-i", "1", check=False)
    assert proc.returncode == 2 and "--addresses" in proc.stderr
    proc = subprocess.run([*ARCHWATCH, "store-server", "--db", str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k != "ARCHWATCH_STORE_PASSWORD"})
    assert proc.returncode == 2 and "ARCHWATCH_STORE_PASSWORD" in proc.stderr
    assert not (tmp_path / "db").exists()  # refused before opening anything


def test_backup_interval_reaches_bytewax_recovery(tmp_path: Path) -> None:
    from datetime import timedelta

    from archwatch.cli import _live_opts, build_parser
    from archwatch.live import prepare_recovery

    args = build_parser().parse_args(["run", "--url", "http://u:p@h:1/", "--backup-interval",
                                      "600", "--recovery-dir", str(tmp_path / "rec")])
    opts = _live_opts(args)
    assert opts.backup_interval == timedelta(minutes=10)
    config = prepare_recovery(opts.recovery_dir, 2, opts.backup_interval)
    assert config.backup_interval == timedelta(minutes=10)
    assert sorted(p.name for p in (tmp_path / "rec").glob("part-*")) == \
        ["part-0.sqlite3", "part-1.sqlite3"]


def test_epoch_interval_defaults_to_longer_epochs_with_recovery(tmp_path: Path) -> None:
    """With recovery an epoch ends in snapshots (5 s by default); without, it only paces
    the partitions' progress reports (1 s); a flag or --config value wins."""
    from datetime import timedelta

    from archwatch.cli import _live_opts, build_parser

    base = ["run", "--url", "http://u:p@h:1/", "--recovery-dir", str(tmp_path / "rec")]

    def epoch(*extra: str) -> timedelta:
        return _live_opts(build_parser().parse_args([*base, *extra])).epoch_interval

    assert epoch() == timedelta(seconds=5)
    assert epoch("--no-recovery") == timedelta(seconds=1)
    assert epoch("--epoch-interval", "0.5") == timedelta(milliseconds=500)
    assert epoch("--no-recovery", "--epoch-interval", "2") == timedelta(seconds=2)
    (tmp_path / "aw.toml").write_text("epoch_interval = 10\n")
    from archwatch.cli import _apply_config

    parser = build_parser()
    argv = [*base, "--config", str(tmp_path / "aw.toml")]
    _apply_config(parser, argv)
    assert _live_opts(parser.parse_args(argv)).epoch_interval == timedelta(seconds=10)
