"""One small storage interface, two backends: embedded chDB (default) and a ClickHouse
server through clickhouse-connect. The SQL is the same; only transport differs."""

from __future__ import annotations

import contextlib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol

import orjson

# JSON output of Int64/UInt64 as numbers, not strings, so rows read back as Python ints.
_READ_SETTINGS = {"output_format_json_quote_64bit_integers": 0}


class StoreError(RuntimeError):
    """A query or insert the store refused; the message is ClickHouse's own."""


class Reader(Protocol):
    """Anything that runs a SELECT and returns rows: a :class:`Store` or a :class:`ReadCache`."""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        ...


class Store(ABC):
    """What archwatch needs of ClickHouse."""

    @abstractmethod
    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing of interest (DDL, INSERT ... SELECT)."""

    @abstractmethod
    def query_text(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None,
                   settings: Mapping[str, Any] | None = None) -> str:
        """Run a query; the result as text in format ``fmt`` (unless the SQL names one).
        ``settings``: ClickHouse settings for this query alone."""

    @abstractmethod
    def insert_json_rows(self, table: str, lines: list[str]) -> None:
        """Insert rows given as JSONEachRow lines (one block, one part)."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release the backend."""

    def generation(self, tables: Iterable[str] | None = None) -> Any:
        """A value that changes after every write to the store (with ``tables``: after
        every write that may touch one of them), or None when writes may happen out of
        this object's sight (then nothing read may be cached). Results read while it had
        one value stay true until it has another: the key of :class:`ReadCache`."""
        return None

    def query(self, sql: str, params: Mapping[str, Any] | None = None,
              settings: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT; rows as dicts. ``settings``: as for :meth:`query_text`."""
        text = self.query_text(sql, "JSONEachRow", params, settings)
        return [orjson.loads(line) for line in text.splitlines() if line]

    def page(self, table: str, cols: str, equals: Mapping[str, str | None], order_by: str,
             limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """One page of ``table FINAL`` where each column in ``equals`` with a non-empty
        value equals it (as a bound parameter), and the total of such rows."""
        conds, params = ["1"], {}
        for i, (col, value) in enumerate(equals.items()):
            if value:
                conds.append(f"{col} = {{p{i}:String}}")
                params[f"p{i}"] = value
        where = " AND ".join(conds)
        total = self.query(f"SELECT count() AS n FROM {table} FINAL WHERE {where}",
                           params)[0]["n"]
        rows = self.query(f"SELECT {cols} FROM {table} FINAL WHERE {where} ORDER BY {order_by}"
                          f" LIMIT {int(limit)} OFFSET {int(offset)}", params)
        return rows, total

    def insert(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert rows (dicts of column values) as one block.

        Rows that all have the same columns in the same order (what every producer
        builds) go as one JSONCompactColumns document with an explicit column list: one
        ``orjson.dumps`` of the transposed rows instead of one per row, and ClickHouse
        parses it faster than JSONEachRow (measured on a replay's rows: encoding 0.30 ->
        0.18 s, insert wall time -15%, same stored rows). Mixed rows go as one JSON array
        of objects in JSONEachRow (so do rows with a key the table lacks, which JSONEachRow
        skips). Values are parsed by the same JSON reader either way,
        so what is stored does not change."""
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        cols = tuple(rows[0])
        # Same columns in every row: each has all of the first row's (else KeyError) and
        # no other (the sizes add up). Cheaper than comparing every row's keys.
        if len(cols) > 1 and sum(map(len, rows)) == len(cols) * len(rows):
            try:
                # column by column: zip(*rows) made a tuple per row, and those allocations
                # set off the cyclic collector over the engine's state (1.4-5 against
                # 0.9 us a row, GIL held, on the writer thread beside the dataflow)
                data = orjson.dumps([list(map(itemgetter(c), rows)) for c in cols])
            except KeyError:
                pass
            else:
                try:
                    self.insert_encoded(table, cols, "JSONCompactColumns", data)
                    return
                except StoreError as exc:
                    # A key the table lacks: JSONEachRow skips it (input_format_skip_
                    # unknown_fields), an explicit column list refuses the block whole, so
                    # nothing was written; keep JSONEachRow's meaning.
                    if "No such column" not in str(exc):
                        raise
        self.insert_encoded(table, None, "JSONEachRow", orjson.dumps(rows))

    def insert_columns(self, table: str, columns: Mapping[str, list[Any]]) -> None:
        """Insert rows given column by column (lists of equal length) as one block."""
        if columns and len(next(iter(columns.values()))):
            self.insert_encoded(table, tuple(columns), "JSONCompactColumns",
                                orjson.dumps(list(columns.values())))

    def insert_encoded(self, table: str, columns: tuple[str, ...] | None, fmt: str,
                       data: bytes) -> None:
        """Insert ``data`` in format ``fmt`` into ``columns`` (all when None). Backends
        that only implement :meth:`insert_json_rows` get rows re-encoded as lines."""
        decoded = orjson.loads(data)
        if fmt == "JSONCompactColumns" and columns is not None:
            decoded = [dict(zip(columns, vals, strict=True)) for vals in zip(*decoded, strict=True)]
        self.insert_json_rows(table, [orjson.dumps(r).decode() for r in decoded])


_OPEN_HERE: set[str] = set()  # store directories this process has opened
# Writes so far per store directory in this process (the only process that can write it).
_GENERATIONS: dict[str, int] = {}
# ... and per table, with "*" for writes whose table is not known (they touch every table)
_TABLE_GENERATIONS: dict[str, dict[str, int]] = {}
_GENERATIONS_LOCK = threading.Lock()
# The table a write statement changes (INSERT INTO t, ALTER TABLE t, TRUNCATE t, ...).
_WRITTEN = re.compile(r"^\s*(?:INSERT\s+INTO|ALTER\s+TABLE|TRUNCATE(?:\s+TABLE)?|OPTIMIZE\s+TABLE"
                      r"|DELETE\s+FROM)\s+(?:IF\s+EXISTS\s+)?`?([A-Za-z_][A-Za-z0-9_]*)`?\s",
                      re.I)
# What each materialized view of the migrations writes when its source is written (0018:
# case_doc_state_mv, case_doc_anomaly_mv), so that a cached read of the target is dropped
# with the source's (tests/test_store.py checks it against the migrated schema's views).
VIEW_TARGETS: dict[str, tuple[str, ...]] = {"case_state": ("case_doc",), "anomaly": ("case_doc",)}

# The tables a read names (FROM t, JOIN t); a dotted name (system.parts) is never cached.
_READ_TABLES = re.compile(r"\b(?:FROM|JOIN)\s+`?([A-Za-z_][A-Za-z0-9_.]*)", re.I)


def read_tables(sql: str) -> frozenset[str] | None:
    """The tables a read names, or None when it cannot be told (no table, or a system
    table whose contents change without writes): such a read is never cached."""
    names = frozenset(_READ_TABLES.findall(sql))
    if not names or any("." in n for n in names):
        return None
    return names


# First words of statements that cannot change a store's data; anything else counts as a write.
_READ_WORDS = ("SELECT", "WITH", "SHOW", "DESC", "EXPLAIN", "EXISTS", "(")


def _is_read(sql: str) -> bool:
    head = sql.lstrip()[:8].upper()
    return head.startswith(_READ_WORDS)


def _locked_elsewhere(status: Path) -> bool:
    """True when another process holds the chDB lock (flock on DIR/status) of a store."""
    import fcntl

    if not status.exists():
        return False
    with status.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class ChdbStore(Store):
    """The embedded store: a chDB directory, owned by exactly one process.

    chDB refuses a second process on the same directory ("Cannot lock file"), so the
    dataflow, the API and ``archwatch sql`` must share this object within one process;
    connections and cursors are safe to use from several threads.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:

        self.path = str(Path(path).resolve())
        if read_only and not Path(self.path).is_dir():
            raise StoreError(f"no store at {self.path}")
        Path(self.path).mkdir(parents=True, exist_ok=True)
        if self.path not in _OPEN_HERE and _locked_elsewhere(Path(self.path) / "status"):
            raise StoreError(
                f"the store {self.path} is open in another process (an embedded store has "
                "one owner: stop it, or query through its API)")
        # min_table_rows_to_use_projection_index=0: read migration 0012's projection
        # indexes (p_case_no) in every part; by default ClickHouse skips them in parts of
        # under 1M rows and scans those parts instead (the case trace at 3M cases: 3 s
        # p50 under 16 clients with the scan).
        dsn = (f"file:{self.path}?output_format_json_quote_64bit_integers=0"
               "&min_table_rows_to_use_projection_index=0")
        if read_only:
            dsn += "&mode=ro"
        self._dsn = dsn
        self._lock = threading.Lock()  # the store server's inserts: one at a time
        # Inserts into one table one at a time (one part per block, in order); into
        # different tables at once (the sink writes a batch's tables in parallel while the
        # dataflow waits for them: chDB's inserts overlap, -30% a batch measured)
        self._table_locks: dict[str, threading.Lock] = {}
        self._table_locks_guard = threading.Lock()
        self._local = threading.local()
        self._conns_lock = threading.Lock()
        self._conns: list[Any] = []
        try:
            self._conn_for_thread()
        except Exception as exc:  # chdb raises RuntimeError subclasses
            raise StoreError(_clean(exc)) from None
        _OPEN_HERE.add(self.path)

    def _conn_for_thread(self) -> Any:
        """One chDB connection per thread: a connection is not safe to share (measured:
        concurrent parameterised queries on one connection lose their parameters)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def connection(self, settings: Mapping[str, str] | None = None) -> Any:
        """This thread's raw chDB connection, for code that speaks ClickHouse itself (the
        store server). With ``settings``, one connection per thread and combination, the
        settings SET once on it, so that a setting never leaks into other queries. A write
        through it must be followed by :meth:`wrote`; the store server's inserts hold
        :attr:`write_lock` (one at a time), this store's own a lock per table."""
        if not settings:
            return self._conn_for_thread()
        key = tuple(sorted(settings.items()))
        conns = getattr(self._local, "by_settings", None)
        if conns is None:
            conns = self._local.by_settings = {}
        conn = conns.get(key)
        if conn is None:
            conn = self._new_connection()
            for k, v in key:
                conn.query(f"SET {k} = {_literal(v)}")
            conns[key] = conn
        return conn

    @property
    def write_lock(self) -> threading.Lock:
        """Held by the store server (archwatch.chserver) around each insert it runs."""
        return self._lock

    def _table_lock(self, table: str) -> threading.Lock:
        """Held by every insert into ``table``."""
        with self._table_locks_guard:
            lock = self._table_locks.get(table)
            if lock is None:
                lock = self._table_locks[table] = threading.Lock()
            return lock

    def _new_connection(self) -> Any:
        """A connection to this store, closed with it."""
        import chdb

        conn = chdb.connect(self._dsn)
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _run(self, sql: str | bytes, fmt: str, params: Mapping[str, Any] | None,
             settings: Mapping[str, Any] | None = None) -> str:
        try:
            conn = self.connection(settings) if settings else self._conn_for_thread()
            res = conn.query(sql, fmt, params=_encode_params(params))
        except Exception as exc:
            raise StoreError(_clean(exc)) from None
        return res.data() if hasattr(res, "data") else str(res)

    def generation(self, tables: Iterable[str] | None = None) -> Any:
        """Writes through any ChdbStore of this directory in this process so far (with
        ``tables``: the writes to each, and those to unknown tables, as a tuple). chDB lets
        one process own a directory, so every write (dataflow sink, API, migrations) passes
        here; it is counted once it has returned, so a result read before it is never
        filed under the new number. (Merges do not change what FINAL reads.)"""
        if tables is None:
            return _GENERATIONS.get(self.path, 0)
        per = _TABLE_GENERATIONS.get(self.path, {})
        return (per.get("*", 0), *(per.get(t, 0) for t in sorted(tables)))

    def wrote(self, table: str | None = None) -> None:
        """Count a write (to ``table``, or to any table when not known; a write to a view's
        source is one to its target too, :data:`VIEW_TARGETS`). The store's own methods
        do; code that writes through a raw chDB connection of this directory
        (:meth:`connection`) must call it afterwards, or a :class:`ReadCache` in this
        process would keep answering from before the write."""
        with _GENERATIONS_LOCK:
            _GENERATIONS[self.path] = _GENERATIONS.get(self.path, 0) + 1
            per = _TABLE_GENERATIONS.setdefault(self.path, {})
            key = table or "*"
            for t in (key, *VIEW_TARGETS.get(key, ())):
                per[t] = per.get(t, 0) + 1

    def _wrote_sql(self, sql: str) -> None:
        m = _WRITTEN.match(sql)
        self.wrote(m.group(1) if m else None)

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            self._run(sql, "CSV", params)
        finally:  # a failed statement may still have written part of its effect
            self._wrote_sql(sql)

    def query_text(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None,
                   settings: Mapping[str, Any] | None = None) -> str:
        if _is_read(sql):
            return self._run(sql, fmt, params, settings)
        try:
            return self._run(sql, fmt, params, settings)
        finally:
            self._wrote_sql(sql)

    def insert_json_rows(self, table: str, lines: list[str]) -> None:
        sql = f"INSERT INTO {table} FORMAT JSONEachRow\n" + "\n".join(lines)
        with self._table_lock(table):
            try:
                self._run(sql, "CSV", None)
            finally:
                self.wrote(table)

    def insert_encoded(self, table: str, columns: tuple[str, ...] | None, fmt: str,
                       data: bytes) -> None:
        # bytes, as chDB takes them: decoding ~500 bytes of a row to str, then concatenating,
        # cost ~2 us a row of the writer thread's GIL time, and chDB encodes str back to UTF-8
        sql = f"INSERT INTO {table}{_column_list(columns)} FORMAT {fmt}\n".encode() + data
        with self._table_lock(table):
            try:
                self._run(sql, "CSV", None)
            finally:
                self.wrote(table)

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):  # closing twice is harmless
                conn.close()


class ServerStore(Store):
    """A ClickHouse server via clickhouse-connect: one client per thread, since a
    clickhouse-connect client is bound to one session and must not be shared."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self._kwargs = kwargs
        self._local = threading.local()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import clickhouse_connect

            client = clickhouse_connect.get_client(
                dsn=self.url, autogenerate_session_id=False, **self._kwargs
            )
            self._local.client = client
        return client

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        try:
            self._client().command(sql, parameters=dict(params or {}) or None)
        except Exception as exc:
            raise StoreError(_clean(exc)) from None

    def query_text(self, sql: str, fmt: str, params: Mapping[str, Any] | None = None,
                   settings: Mapping[str, Any] | None = None) -> str:
        try:
            raw = self._client().raw_query(
                sql, parameters=dict(params or {}) or None, fmt=fmt,
                settings={**_READ_SETTINGS, **(settings or {})})
        except Exception as exc:
            raise StoreError(_clean(exc)) from None
        return raw.decode("utf-8")

    def insert_json_rows(self, table: str, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        try:
            self._client().raw_insert(table, insert_block=data, fmt="JSONEachRow")
        except Exception as exc:
            raise StoreError(_clean(exc)) from None

    def insert_encoded(self, table: str, columns: tuple[str, ...] | None, fmt: str,
                       data: bytes) -> None:
        try:
            self._client().raw_insert(table, column_names=list(columns) if columns else None,
                                      insert_block=data, fmt=fmt)
        except Exception as exc:
            raise StoreError(_clean(exc)) from None

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()


class ReadCache:
    """Results of reads, each valid while the store's :meth:`Store.generation` of the
    tables it read is unchanged (a write to another table keeps it: under live load the
    dataflow writes every epoch, but the KPI table only when a KPI moved).

    Correct, not merely fresh-enough: an entry is filed under the generation read *before*
    its query ran, and a generation moves only after a write has finished, so an entry
    can hold data older than its generation's only if no reader will ask for that
    generation again. Stores without a generation (a ClickHouse server that other
    processes write) are never cached, nor are reads whose tables cannot be told.
    Bounded: at most ``size`` entries, the oldest dropped first. ``settings``: ClickHouse
    settings for every query it sends (the API's ``max_threads``).
    """

    def __init__(self, store: Store, size: int = 4096,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.store = store
        self.size = size
        self.settings = dict(settings or {}) or None
        self._entries: dict[Any, tuple[Any, Any]] = {}  # key -> (generation, value)
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: Any, compute: Any,
                       tables: Iterable[str] | None = None) -> Any:
        """``compute()``'s value for ``key`` (hashable), computed once per generation of
        ``tables`` (of the whole store when None)."""
        if self.size <= 0:
            return compute()
        gen = self.store.generation(tables)
        if gen is None:
            return compute()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == gen:
                self.hits += 1
                return hit[1]
        self.misses += 1
        value = compute()
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (gen, value)
        return value

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``store.query``, cached. Callers must not mutate the rows returned."""
        tables = read_tables(sql)
        if tables is None:
            return self.store.query(sql, params, self.settings)
        key = (sql, tuple(sorted((k, _freeze(v)) for k, v in (params or {}).items())))
        return self.get_or_compute(key, lambda: self.store.query(sql, params, self.settings),
                                   tables)


def _column_list(columns: tuple[str, ...] | None) -> str:
    """`` (`a`, `b`)`` for an INSERT, or nothing for all columns."""
    if not columns:
        return ""
    return " (" + ", ".join("`" + c.replace("`", "\\`") + "`" for c in columns) + ")"


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _literal(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.translate(_ESCAPES).replace("'", "\\'") + "'"
    return str(v)


_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r",
                          "\0": "\\0"})


def _encode_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    """chDB takes parameter values as text in ClickHouse's escaped format (a newline or a
    backslash in a value must be escaped); arrays must be ClickHouse literals."""
    out = {}
    for k, v in (params or {}).items():
        if isinstance(v, list | tuple):
            out[k] = "[" + ",".join(_literal(x) for x in v) + "]"
        else:
            out[k] = str(v).translate(_ESCAPES)
    return out


def _clean(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split("\nStack trace")[0]


def open_store(db: str | Path | None = None, url: str | None = None,
               read_only: bool = False) -> Store:
    """The embedded store at ``db``, or a server at ``url`` (``http://user:pw@host:8123/db``)."""
    if url:
        return ServerStore(url)
    if db is None:
        raise ValueError("either a --db directory or a --url is needed")
    return ChdbStore(db, read_only=read_only)
