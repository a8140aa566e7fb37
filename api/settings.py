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
