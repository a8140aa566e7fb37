"""Dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from archwatch.api.kpicube import hold
from archwatch.api.settings import Settings
from fastapi import Depends, Query, Request

from archwatch.store import ChdbStore, ReadCache, Store

# The dependencies are async: they do no I/O, and FastAPI runs a sync one in its thread
# pool (a hand-over between threads per dependency per request); the routes that query
# the store stay sync and run there.


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_reads(request: Request) -> ReadCache:
    """The store's reads through the app's :class:`ReadCache` (statistics, drill-down,
    anomalies: what the dashboards ask again and again between two writes)."""
    state = request.app.state
    reads = getattr(state, "reads", None)
    if reads is None or reads.store is not state.store:
        reads = state.reads = ReadCache(state.store, state.settings.read_cache_entries,
                                        read_settings(state.store, state.settings))
        hold(reads, state.settings.kpi_cube_rows)
    return reads


def read_settings(store: Store, settings: Settings) -> dict[str, int]:
    """ClickHouse settings for the API's reads on an embedded store, whose cores are the
    API's own (a server's operators tune theirs): ``max_threads``, and no parallel output
    formatting — two more threads woken for every read, whatever its size, where an API
    answer is a page (a case's trace: ≈ 15% of its CPU, bench/RESULTS.md)."""
    if not isinstance(store, ChdbStore):
        return {}
    out = {"output_format_parallel_formatting": 0}
    if settings.read_max_threads > 0:
        out["max_threads"] = settings.read_max_threads
    return out


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
ReadsDep = Annotated[ReadCache, Depends(get_reads)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


class Page:
    """1-based page number and a size capped at the configured maximum."""

    def __init__(self, no: int, size: int, cap: int) -> None:
        self.no = no
        self.size = min(size, cap)

    @property
    def offset(self) -> int:
        return (self.no - 1) * self.size


async def get_page(
    settings: SettingsDep,
    pageNo: Annotated[int, Query(ge=1, le=1_000_000, description="1-based page")] = 1,  # noqa: N803
    pageSize: Annotated[int, Query(ge=1, description="rows per page (capped)")] = 10,  # noqa: N803
) -> Page:
    return Page(pageNo, pageSize, settings.max_page_size)


PageDep = Annotated[Page, Depends(get_page)]
