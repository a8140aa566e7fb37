"""The API's one settings object (environment: ``ARCHWATCH_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARCHWATCH_", extra="ignore")

    db: Path | None = None
    """Embedded (chDB) store directory."""
    url: str | None = None
    """ClickHouse server URL (instead of ``db``)."""
    max_page_size: int = 200
    """Page sizes above this are capped, never refused."""
    jwt_secret: str = ""
    """Signs session tokens; empty: one is kept in the store directory (or made per run)."""
    session_ttl: int = 8 * 3600
    """Seconds a login session lasts."""
    rate_per_second: float = 20.0
    """Requests per second per caller (token bucket) ..."""
    rate_burst: int = 60
    """... with bursts of this many."""
    max_body_bytes: int = 10 * 1024 * 1024
    """Request bodies above this are refused (413)."""
    sql_max_seconds: int = 10
    """Auditor SQL: query time limit."""
    sql_max_rows: int = 1_000_000
    """Auditor SQL: result rows limit."""
    brokers: str | None = None
    """Kafka bootstrap servers: HTTP heartbeats are published there, to the dataflow."""
    topic_prefix: str = ""
    """Prefix of the Kafka topic names (as given to `archwatch run`)."""
    read_cache_entries: int = 4096
    """Results of statistics/drill-down/anomaly reads kept until the next write to a
    table they read (never stale: see archwatch.store.ReadCache); 0 turns the cache off. Only an
    embedded store is cached: a server may be written by other processes."""
    kpi_cube_rows: int = 500_000
    """The statistics reads answer from ``kpi_item`` held in memory (archwatch.api.kpicube)
    while it has at most this many rows (≈ 400 bytes a row; 23,505 rows at 100 million
    cases); 0 sends every read to the store. Only where reads are cached (above)."""
    read_max_threads: int = 1
    """Threads one API read may use in an embedded store (ClickHouse's ``max_threads``);
    0: ClickHouse's default (the machine's cores). The API answers many clients at once
    on the cores the store shares with it: splitting each small read over every core only
    adds hand-overs (bench/RESULTS.md section 4, session 7). A server tunes its own."""
    lateness_ms: int = 5 * 60_000
    """The engine's lateness, to tell a late receiver from a down one."""
