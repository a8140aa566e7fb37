"""The ClickHouse HTTP interface over the embedded store, for auditors' SQL clients
(clickhouse-connect, curl, desktop clients): read-only, region-scoped, limited."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from archwatch.api.auth import authenticate
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from archwatch.accounts import Role
from archwatch.sqlguard import AuditorScope, SqlRefused, check_ast
from archwatch.store import ChdbStore

router = APIRouter(tags=["auditor SQL"])
MAX_QUERY_BYTES = 256 * 1024
SQL_ROLES = (Role.auditor, Role.city)
_FORMAT = r"(?is)\bFORMAT\s+(\w+)\s*;?\s*$"


def _error(status: int, code: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(f"Code: {code}. DB::Exception: {message}\n", status_code=status,
                             headers={"X-ClickHouse-Exception-Code": str(code)})


@router.get("/ping", include_in_schema=False)
def ping() -> PlainTextResponse:
    """ClickHouse's liveness answer."""
    return PlainTextResponse("Ok.\n")


@router.get("/", operation_id="clickhouse_http_get")
@router.post("/", operation_id="clickhouse_http_post")
async def clickhouse_http(
    request: Request,
    query: Annotated[str, Query(max_length=MAX_QUERY_BYTES)] = "",
    default_format: Annotated[str, Query(pattern=r"^\w{1,64}$")] = "TabSeparated",
) -> Response:
    """ClickHouse HTTP interface (read-only auditor SQL with Basic auth or
    X-ClickHouse-User/Key); the query is the ``query`` parameter followed by the body."""
    import re

    try:
        principal = authenticate(request)
    except ApiError as exc:
        return _error(exc.status, 516 if exc.status == 401 else 497, exc.message)
    if principal.role not in SQL_ROLES:
        return _error(403, 497, f"{principal.role.value} accounts have no SQL access")
    store = request.app.state.store
    if not isinstance(store, ChdbStore):
        return _error(501, 48, "connect to the ClickHouse server itself (row policies apply)")
    body = (await request.body()).decode("utf-8", "replace") if request.method == "POST" else ""
    sql = (query + ("\n" if query and body else "") + body).strip()
    if not sql:
        return _error(400, 62, "empty query")
    if len(sql.encode()) > MAX_QUERY_BYTES:
        return _error(413, 62, f"query over {MAX_QUERY_BYTES} bytes")
    m = re.search(_FORMAT, sql)
    fmt = m.group(1) if m else default_format
    scope = AuditorScope(principal.qym)
    settings = request.app.state.settings

    def run() -> Response:
        import chdb

        conn = chdb.connect(f"file:{store.path}")
        try:
            for stmt in scope.settings(settings.sql_max_seconds, settings.sql_max_rows):
                conn.query(stmt)
            bare = re.sub(_FORMAT, "", sql).rstrip().rstrip(";")
            try:
                ast = conn.query("EXPLAIN AST " + bare, "TabSeparatedRaw").data()
                check_ast(ast, scope)
            except SqlRefused as exc:
                return _error(403, 497, str(exc))
            result = conn.query(bare, fmt)
        except Exception as exc:  # ClickHouse's own message, as its HTTP interface answers
            text = str(exc).split("\nStack trace")[0]
            code = re.search(r"Code: (\d+)", text)
            status = 403 if "READONLY" in text or "privileges" in text.lower() else 400
            return _error(status, int(code.group(1)) if code else 1000,
                          text.split("DB::Exception: ", 1)[-1])
        finally:
            conn.close()
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                   "elapsed_ns": str(int(result.elapsed() * 1e9))}
        request.app.state.accounts.audit(principal.username, "sql", "", sql[:2000])
        return Response(result.bytes(), media_type="text/plain; charset=UTF-8", headers={
            "X-ClickHouse-Format": fmt, "X-ClickHouse-Summary": json.dumps(summary),
            "X-ClickHouse-Timezone": "UTC"})

    return await asyncio.to_thread(run)
