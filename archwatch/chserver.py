"""`archwatch store-server`: the embedded store behind ClickHouse's HTTP protocol.

A chDB directory has exactly one owning process (chDB locks it). A Bytewax cluster of
several processes, a second API process or the distributor next to `archwatch up` all
need the same tables, so one process owns the directory and speaks the subset of the
ClickHouse HTTP interface that clickhouse-connect (the project's server backend,
:class:`~archwatch.store.ServerStore`) uses; every other process opens the store with
``--url http://archwatch:PASSWORD@127.0.0.1:8123/``. Every process then runs exactly the
code it runs against a real ClickHouse server in production, so the loopback cluster
test exercises the production path.

This is the engine's own store endpoint, with full rights: it listens on loopback by
default and needs a password. Auditors use the API's read-only, region-scoped
interface instead (``archwatch.api.routes.sql``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import zlib
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from archwatch.store import ChdbStore, _is_read

# URL parameters of the HTTP protocol itself; any other is a ClickHouse setting
_TRANSPORT = {
    "query", "database", "default_format", "query_id", "session_id", "session_timeout",
    "session_check", "user", "password", "compress", "decompress", "quota_key",
    "wait_end_of_query", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "enable_http_compression", "buffer_size", "client_protocol_version",
    "cancel_http_readonly_queries_on_client_close",
}
# settings the store's own connections already have (no private connection needed)
_DEFAULTS = {"output_format_json_quote_64bit_integers": "0", "readonly": "0"}
_FORMAT = re.compile(r"(?is)\bFORMAT\s+(\w+)\s*;?\s*$")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _error(status: int, code: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(f"Code: {code}. DB::Exception: {message}\n", status_code=status,
                             headers={"X-ClickHouse-Exception-Code": str(code)})


def _credentials(request: Request) -> tuple[str, str]:
    """User and password the way ClickHouse accepts them: X-ClickHouse-User/Key headers,
    HTTP Basic, or ``user``/``password`` URL parameters."""
    h = request.headers
    if "x-clickhouse-user" in h:
        return h["x-clickhouse-user"], h.get("x-clickhouse-key", "")
    auth = h.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", ""
        return user, pw
    q = request.query_params
    return q.get("user", "default"), q.get("password", "")


def _decode_body(body: bytes, encoding: str) -> bytes:
    """Undo the Content-Encoding a client compressed an INSERT's data with."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        return zlib.decompress(body, 47)  # 32 + 15: zlib or gzip header, auto-detected
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _settings(params: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if k in _TRANSPORT or k.startswith("param_") or _DEFAULTS.get(k) == v:
            continue
        if not _SETTING_NAME.match(k):
            raise ValueError(f"bad setting name {k!r}")
        out[k] = v
    return out


def create_app(store: ChdbStore, user: str, password: str) -> Starlette:
    """The ClickHouse HTTP endpoint (``/``, ``/ping``) over ``store``."""

    def execute(sql: str, fmt: str, params: dict[str, str], settings: dict[str, str]) -> Any:
        conn = store.connection(settings)  # settings SET once per thread and combination
        if _is_read(sql):
            return conn.query(sql, fmt, params=params)
        try:
            if sql.lstrip()[:6].upper() == "INSERT":
                with store.write_lock:  # one insert at a time (the table is not parsed)
                    return conn.query(sql, fmt, params=params)
            return conn.query(sql, fmt, params=params)
        finally:  # a read cache in this process must not answer from before this write
            store.wrote()

    async def ping(_request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def handle(request: Request) -> Response:
        who, pw = _credentials(request)
        if not (hmac.compare_digest(who.encode(), user.encode())
                and hmac.compare_digest(pw.encode(), password.encode())):
            return _error(401, 516, f"{who}: Authentication failed: password is incorrect, "
                          "or there is no user with such name")
        q = request.query_params
        body = b""
        if request.method == "POST":
            try:
                body = _decode_body(await request.body(),
                                    request.headers.get("content-encoding", ""))
            except Exception as exc:  # a body we cannot read is the client's error
                return _error(400, 432, f"cannot decode the request body: {exc}")
        query = q.get("query", "")
        text = body.decode("utf-8", "replace")
        sql = query + ("\n" if query and text else "") + text
        if not sql.strip():
            return _error(400, 62, "Empty query")
        fmt = q.get("default_format", "TabSeparated")
        m = _FORMAT.search(sql) if sql.lstrip()[:6].upper() != "INSERT" else None
        if m:
            fmt = m.group(1)
        params = {k[6:]: v for k, v in q.items() if k.startswith("param_")}
        try:
            settings = _settings(q)
        except ValueError as exc:
            return _error(400, 115, str(exc))
        try:
            result = await asyncio.to_thread(execute, sql, fmt, params, settings)
        except Exception as exc:  # ClickHouse's own message, as its HTTP interface answers
            text = str(exc).split("\nStack trace")[0]
            code = re.search(r"Code: (\d+)", text)
            return _error(500, int(code.group(1)) if code else 1000,
                          text.split("DB::Exception: ", 1)[-1])
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                   "elapsed_ns": str(int(result.elapsed() * 1e9))}
        return Response(result.bytes(), media_type="text/plain; charset=UTF-8", headers={
            "X-ClickHouse-Format": fmt, "X-ClickHouse-Summary": json.dumps(summary),
            "X-ClickHouse-Timezone": "UTC"})

    return Starlette(routes=[
        Route("/ping", ping, methods=["GET", "HEAD"]),
        Route("/", handle, methods=["GET", "POST"]),
    ])
