"""The FastAPI application: statistics, anomalies, case traces, seed endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from archwatch.api import errors
from archwatch.api.auth import LoginThrottle, PrincipalCache, RateLimiter
from archwatch.api.routes import (
    admin,
    alerts,
    anomalies,
    auth,
    cases,
    console,
    distribution,
    receivers,
    seed,
    sql,
    stats,
    webhooks,
)
from archwatch.api.settings import Settings
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from archwatch import __version__
from archwatch.accounts import Accounts
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
        app.state.accounts = Accounts(app.state.store)
        if not settings.jwt_secret:
            settings.jwt_secret = _jwt_secret(settings)
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
    app.state.accounts = Accounts(store) if store is not None else None
    app.state.throttle = LoginThrottle()
    app.state.principals = PrincipalCache()
    app.state.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
    errors.install(app)
    for r in (auth.router, admin.router, seed.router, stats.router, anomalies.router,
              alerts.router, cases.router, receivers.router, distribution.router,
              webhooks.router, webhooks.notifier_router, console.router, sql.router):
        app.include_router(r)

    app.add_middleware(CapBody, max_bytes=settings.max_body_bytes)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers and its store runs a query."""
        app.state.store.query("SELECT 1")
        return {"status": "ok"}

    return app


class CapBody:
    """413 for a request whose Content-Length is over ``max_bytes`` (or not a number).
    Plain ASGI: ``@app.middleware("http")`` (BaseHTTPMiddleware) wraps every request in a
    task group and a streamed response, ~10% of a small request's CPU here."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.max_bytes:
                        response = JSONResponse(
                            {"error": {"code": "too_large", "details": [],
                                       "message": f"body over {self.max_bytes} bytes"}},
                            status_code=413)
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


def _jwt_secret(settings: Settings) -> str:
    """A signing key that survives restarts of the embedded default (kept beside the
    store, owner-only); elsewhere set ARCHWATCH_JWT_SECRET, or sessions end at restart."""
    import os
    import secrets

    if settings.db is None:
        return secrets.token_urlsafe(32)
    path = Path(settings.db) / ".jwt-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text().strip()
