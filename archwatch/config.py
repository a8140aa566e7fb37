"""One configuration file plus environment variables, validated before anything starts.

Precedence: command-line flags > ``ARCHWATCH_*`` environment variables > the file given
with ``--config`` (TOML) > built-in defaults. Keys are the long flag names with ``_``
(``archive_sla``, ``topic_prefix``, ...); an unknown key or a bad value stops the command
with one line naming it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from archwatch.timeutil import TimeFormatError, parse_duration

DURATIONS = ("archive_sla", "push_sla", "check_sla", "backup_sla", "distribution_sla",
             "orphan_grace", "lateness", "group_window", "takeover", "outbox_retention")


class ConfigError(ValueError):
    """A configuration the commands refuse, with the key and the reason."""


class FileConfig(BaseModel):
    """Every key a configuration file or environment variable may set."""

    model_config = ConfigDict(extra="forbid")

    db: Path | None = None
    url: str | None = None
    brokers: str | None = None
    topic_prefix: str | None = None
    partitions: int | None = Field(default=None, ge=1, le=10_000)
    workers: int | None = Field(default=None, ge=1, le=256)
    shards: int | None = Field(default=None, ge=1, le=4096)
    recovery_dir: Path | None = None
    epoch_interval: float | None = Field(default=None, gt=0, le=3600)
    backup_interval: float | None = Field(default=None, ge=0, le=30 * 86400)
    snapshot_file_bytes: int | None = Field(default=None, ge=0, le=2**31 - 1)
    receivers: Path | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65_535)
    metrics_port: int | None = Field(default=None, ge=0, le=65_535)
    metrics_host: str | None = None
    addresses: str | None = None
    process_id: int | None = Field(default=None, ge=0, le=10_000)
    store_password: str | None = None
    archive_sla: str | None = None
    push_sla: str | None = None
    check_sla: str | None = None
    backup_sla: str | None = None
    distribution_sla: str | None = None
    orphan_grace: str | None = None
    lateness: str | None = None
    down_after: int | None = Field(default=None, ge=1, le=1000)
    up_after: int | None = Field(default=None, ge=1, le=1000)
    webhooks: Path | None = None
    group_window: str | None = None
    group_min: int | None = Field(default=None, ge=1, le=10_000)
    notify_interval: float | None = Field(default=None, gt=0, le=3600)
    takeover: str | None = None
    deliverer_id: str | None = Field(default=None, min_length=1, max_length=200)
    outbox_retention: str | None = None

    @field_validator(*DURATIONS)
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_duration(v)
            except TimeFormatError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("receivers", "webhooks")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v


def _env(environ: dict[str, str]) -> dict[str, str]:
    out = {}
    for key in FileConfig.model_fields:
        value = environ.get("ARCHWATCH_" + key.upper())
        if value is not None and value != "":
            out[key] = value
    return out


def load(path: Path | None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, validated settings (only the keys that were set)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--config: no such file: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        data = data.get("archwatch", data)  # a [archwatch] table, or top-level keys
    data.update(_env(dict(os.environ) if environ is None else environ))
    try:
        cfg = FileConfig.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path is not None else "environment"
        parts = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            parts.append(f"{key}: {msg.removeprefix('Value error, ')}")
        raise ConfigError(f"{where}: " + "; ".join(parts)) from None
    return cfg.model_dump(exclude_none=True)
