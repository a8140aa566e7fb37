"""Auditors on a ClickHouse server: real users, a read-only role, and row policies by qym.

On the embedded store the same scope is enforced by the API's ClickHouse HTTP endpoint
(:mod:`archwatch.sqlguard`); on a server, ClickHouse itself enforces it, so auditors'
desktop clients connect to the server directly.
"""

from __future__ import annotations

from archwatch.sqlguard import PUBLIC_TABLES, QYM_TABLES

ROLE = "archwatch_auditor"


def role_statements(database: str = "default") -> list[str]:
    """The shared read-only role: SELECT on the auditor tables, nothing else."""
    out = [f"CREATE ROLE IF NOT EXISTS {ROLE}"]
    out += [f"GRANT SELECT ON {database}.{t} TO {ROLE}" for t in sorted(PUBLIC_TABLES)]
    return out


def auditor_statements(username: str, password: str, qym: str = "",
                       database: str = "default", max_seconds: int = 10,
                       max_rows: int = 1_000_000) -> list[str]:
    """A server user for one auditor: read-only with limits, the role, and (when scoped)
    a row policy per table so that it sees only its region's rows."""
    if not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError("username: letters, digits, '-', '_' or '.'")
    if qym and not (len(qym) == 6 and qym.isdigit()):
        raise ValueError("qym: a six-digit region code")
    pw = password.replace("\\", "\\\\").replace("'", "\\'")
    user = f"`{username}`"
    out = [
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_password BY '{pw}' "
        f"SETTINGS readonly = 2, max_execution_time = {int(max_seconds)}, "
        f"max_result_rows = {int(max_rows)}, result_overflow_mode = 'throw'",
        f"GRANT {ROLE} TO {user}",
        f"SET DEFAULT ROLE {ROLE} TO {user}",
    ]
    if qym:
        for t in QYM_TABLES:
            out.append(f"CREATE ROW POLICY IF NOT EXISTS `qym_{username}` ON {database}.{t} "
                       f"FOR SELECT USING qym = '{qym}' TO {user}")
        # event_log carries no region: a scoped auditor does not read it on a server either
        out.append(f"REVOKE SELECT ON {database}.event_log FROM {user}")
    return out
