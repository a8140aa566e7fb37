"""Apply the numbered SQL migrations in ``clickhouse/migrations`` exactly once each.

A landed migration is never edited: its SHA-256 is recorded, and a changed file stops
the run with a clear error instead of silently diverging from what the store holds.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources

from archwatch.store import Store

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
log = logging.getLogger("archwatch.migrate")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def split_statements(sql: str) -> list[str]:
    """Split on ``;`` outside quotes and comments (``--`` to end of line, ``/* */``);
    comments are dropped."""
    out: list[str] = []
    cur: list[str] = []
    i, n = 0, len(sql)
    quote = ""
    while i < n:
        ch = sql[i]
        if quote:
            cur.append(ch)
            if ch == "\\" and i + 1 < n:
                cur.append(sql[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            cur.append(ch)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            continue
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        elif ch == ";":
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur).strip())
    return [s for s in out if s]


def load_migrations() -> list[Migration]:
    root = resources.files("archwatch.clickhouse").joinpath("migrations")
    out = []
    for entry in root.iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return out


class MigrationError(RuntimeError):
    pass


def migrate(store: Store) -> list[str]:
    """Bring the store's schema up to date; returns the names of migrations applied now."""
    store.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
        "checksum String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    applied = {
        r["version"]: r for r in store.query("SELECT version, name, checksum FROM schema_migrations")
    }
    done = []
    for mig in load_migrations():
        seen = applied.get(mig.version)
        if seen is not None:
            if seen["checksum"] != mig.checksum:
                raise MigrationError(
                    f"migration {mig.name} changed after it was applied; add a new migration "
                    "instead of editing a landed one"
                )
            continue
        # some copy every row of a table (0013, 0016: a minute or more at 100M cases):
        # say what the process is doing before it goes quiet
        log.info("schema: applying %s", mig.name)
        started = time.monotonic()
        for stmt in mig.statements():
            store.command(stmt)
        log.info("schema: applied %s in %.1f s", mig.name, time.monotonic() - started)
        store.insert(
            "schema_migrations",
            [{"version": mig.version, "name": mig.name, "checksum": mig.checksum}],
        )
        done.append(mig.name)
    return done
