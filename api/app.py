"""The FastAPI application: statistics, anomalies, case traces, seed endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from archwatch.api import errors
from archwatch.api.routes import anomalies, cases, seed, stats
from archwatch.api.settings import Settings
from fastapi import FastAPI

from archwatch import __version__
from archwatch.migrate import migrate
from archwatch.store import Store, open_store


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """Build the app; pass ``store`` to share one the process already owns (chDB)."""
    settings = settings or Settings()
    owned = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.store is None:
            app.state.store = open_store(settings.db, settings.url)
            migrate(app.state.store)
        yield
        if owned and app.state.store is not None:
            app.state.store.close()

    app = FastAPI(
        title="archwatch",
        version=__version__,
        description="Archive-chain supervision: statistics (归档率, 归档周期, 归档错误率), "
                    "drill-down to the case, anomalies (漏/错/重), and the seed endpoints.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    errors.install(app)
    for r in (seed.router, stats.router, anomalies.router, cases.router):
        app.include_router(r)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers and its store runs a query."""
        app.state.store.query("SELECT 1")
        return {"status": "ok"}

    return app
