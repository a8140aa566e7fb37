"""Server-side auditor provisioning: ClickHouse's own parser accepts every statement."""

from __future__ import annotations

import pytest

from archwatch.server_access import ROLE, auditor_statements, role_statements
from archwatch.sqlguard import PUBLIC_TABLES, QYM_TABLES


def parses(store, sql: str) -> str:
    return store.query_text("SELECT formatQuery({q:String})", "TSVRaw", {"q": sql}).strip()


def test_scoped_auditor_gets_a_read_only_user_and_a_policy_per_table(store) -> None:
    stmts = role_statements() + auditor_statements("audit-xs", "s3cret'pw", qym="330109")
    for sql in stmts:
        assert parses(store, sql)  # ClickHouse's parser, no server needed
    text = "\n".join(stmts)
    assert "readonly = 2" in text and "max_execution_time = 10" in text
    for t in PUBLIC_TABLES:
        assert f"GRANT SELECT ON default.{t} TO {ROLE}" in text
    for t in QYM_TABLES:
        assert f"ON default.{t} FOR SELECT USING qym = '330109' TO `audit-xs`" in text
    assert "REVOKE SELECT ON default.event_log FROM `audit-xs`" in text
    assert "account" not in {w.strip("`,") for w in text.split()}


def test_city_wide_auditor_has_no_policy_and_bad_input_is_refused() -> None:
    stmts = auditor_statements("audit-city", "pw")
    assert not any("ROW POLICY" in s for s in stmts)
    with pytest.raises(ValueError):
        auditor_statements("x; DROP TABLE anomaly", "pw")
    with pytest.raises(ValueError):
        auditor_statements("a", "pw", qym="33'01")
