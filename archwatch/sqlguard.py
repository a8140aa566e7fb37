"""Auditor SQL on the embedded store: read-only, scoped, limited — checked by ClickHouse's
own parser (``EXPLAIN AST``), enforced by ClickHouse's own settings.

- ``readonly = 1`` set last on a private connection: no writes, and no setting (limits or
  filters) can be changed by the query itself.
- ``additional_table_filters`` restricts each auditor table to the auditor's region: the
  embedded store's stand-in for a server's row policies.
- The parsed query may not use table functions (``merge()``, ``file()``, ``remote()`` read
  around the filters), archwatch's private tables (accounts, audit log), or system
  tables beyond the few that SQL clients read when they connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PUBLIC_TABLES = {"case_state", "anomaly", "anomaly_count", "kpi_task", "kpi_item", "receiver",
                 "receiver_status", "event_log"}
# (case_doc: case_state and anomaly again, ordered by case number for the API's reads,
# migration 0018 — engine internals, not the contract's auditor tables; auditors read
# case_state and anomaly themselves. case_by_no, anomaly_by_case: the same, 0017 to 0018.)
PRIVATE_TABLES = {"account", "audit_log", "schema_migrations", "case_by_no", "anomaly_by_case",
                  "case_doc"}
SYSTEM_ALLOWED = {
    "one", "numbers", "settings", "functions", "formats", "data_type_families",
    "table_engines", "databases", "tables", "columns", "build_options", "time_zones",
    "collations", "contributors", "table_functions", "aggregate_function_combinators",
}
# tables with a qym column, filtered for a region-scoped auditor
QYM_TABLES = ("case_state", "anomaly", "anomaly_count", "kpi_task", "kpi_item", "receiver",
              "receiver_status")

_TABLE = re.compile(r"^\s*TableIdentifier (\S+)")
_TABLE_EXPR = re.compile(r"^(\s*)TableExpression\b")
_FUNC = re.compile(r"^\s*Function (\S+)")


class SqlRefused(ValueError):
    """The query may not run for this auditor (message says why)."""


@dataclass(frozen=True)
class AuditorScope:
    qym: str = ""  # six digits, or empty for the whole city

    def settings(self, max_seconds: int, max_rows: int) -> list[str]:
        """SET statements, in order; ``readonly = 1`` last so none can be undone."""
        out = [
            f"SET max_execution_time = {int(max_seconds)}",
            f"SET max_result_rows = {int(max_rows)}",
            "SET result_overflow_mode = 'throw'",
            "SET max_memory_usage = 4000000000",
            "SET max_threads = 2",
        ]
        if self.qym:
            assert self.qym.isdigit() and len(self.qym) == 6
            filters = ", ".join(
                f"'{name}': 'qym = ''{self.qym}'''"
                for t in QYM_TABLES for name in (t, f"default.{t}"))
            out.append(f"SET additional_table_filters = {{{filters}}}")
        out.append("SET readonly = 1")
        return out


def check_ast(ast: str, scope: AuditorScope) -> None:
    """Refuse table functions, private tables and unlisted system tables."""
    lines = ast.splitlines()
    for i, line in enumerate(lines):
        m = _TABLE_EXPR.match(line)
        if m and i + 1 < len(lines):
            f = _FUNC.match(lines[i + 1])
            if f and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > len(m.group(1)):
                raise SqlRefused(f"table function {f.group(1)}() is not allowed")
        t = _TABLE.match(line)
        if t is None:
            continue
        name = t.group(1).strip("`\"")
        db, _, table = name.rpartition(".")
        db, table = db.strip("`\"").lower(), table.strip("`\"")
        if db in ("", "default", "_local"):
            if table in PRIVATE_TABLES:
                raise SqlRefused(f"table {table} is not open to auditors")
            if scope.qym and table == "event_log":
                raise SqlRefused("event_log is open to city-wide auditors only")
        elif db == "system":
            if table not in SYSTEM_ALLOWED:
                raise SqlRefused(f"system.{table} is not open to auditors")
        elif db in ("information_schema",):
            continue
        else:
            raise SqlRefused(f"database {db} is not open to auditors")
