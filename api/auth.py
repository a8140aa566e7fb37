"""Who is calling, and what they may see: bearer tokens (session JWTs or API tokens),
login throttling, per-caller rate limits, and the server-side scope of every query."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from archwatch.api.errors import ApiError
from fastapi import Depends, Request

from archwatch.accounts import TOKEN_PREFIX, Account, Accounts, Role

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """The caller and its scope; every query is filtered by :meth:`conditions`."""

    username: str
    role: Role
    qym: str = ""
    dept_code: str = ""
    system_code: str = ""

    @classmethod
    def of(cls, a: Account) -> Principal:
        return cls(a.username, a.role, a.qym, a.dept_code, a.system_code)

    @property
    def scope(self) -> dict[str, str]:
        """Fixed filters of this caller, by API dimension name."""
        out = {}
        if self.qym:
            out["qym"] = self.qym
        if self.dept_code:
            out["deptCode"] = self.dept_code
        if self.system_code:
            out["systemCode"] = self.system_code
        return out

    def narrow(self, requested: dict[str, Any]) -> dict[str, Any]:
        """The requested filters within this scope; asking outside it is a 403."""
        out = dict(requested)
        for dim, own in self.scope.items():
            asked = out.get(dim)
            if asked is not None and str(asked) != own:
                raise ApiError(403, "forbidden", f"{dim} {asked!r} is outside your scope")
            out[dim] = own
        return out

    def conditions(self, columns: dict[str, str]) -> tuple[str, dict[str, str]]:
        """SQL conditions (and parameters) restricting a table to this scope; ``columns``
        maps API dimensions to the table's columns."""
        parts, params = [], {}
        for dim, own in self.scope.items():
            parts.append(f"{columns[dim]} = {{scope_{dim}:String}}")
            params[f"scope_{dim}"] = own
        return " AND ".join(parts) or "1", params

    def allows(self, row: dict[str, Any], columns: dict[str, str]) -> bool:
        return all(row.get(columns[dim]) == own for dim, own in self.scope.items())


class LoginThrottle:
    """After ``limit`` failures within ``window`` s for a username (``ip_limit`` for a
    client address, which many users may share), further attempts are refused until the
    window has passed (429), right or wrong."""

    def __init__(self, limit: int = 5, window: float = 900.0, ip_limit: int = 50) -> None:
        self.limit, self.window, self.ip_limit = limit, window, ip_limit
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self.failures.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self.lock:
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= (self.ip_limit if key.startswith("ip:") else self.limit):
                    retry = int(self.window - (now - q[0])) + 1
                    raise ApiError(429, "too_many_attempts",
                                   f"too many failed logins; retry in {retry} s")

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self.lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.failures.pop(key, None)


class RateLimiter:
    """Token bucket per caller: ``rate`` requests/s with bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                raise ApiError(429, "rate_limited", "too many requests; slow down")
            self.buckets[key] = (tokens - 1, now)


def issue_token(p: Principal, secret: str, ttl: int) -> tuple[str, int]:
    exp = int(time.time()) + ttl
    token = jwt.encode({"sub": p.username, "role": p.role.value, "exp": exp}, secret,
                       algorithm=ALGORITHM)
    return token, exp


def _credentials(request: Request) -> tuple[str, str] | str | None:
    """A bearer token, or (user, password) from Basic auth / ClickHouse headers."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if auth.lower().startswith("basic "):
        try:
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(401, "unauthorized", "malformed Basic credentials") from None
        return user, pw
    user = request.headers.get("x-clickhouse-user")
    if user:
        return user, request.headers.get("x-clickhouse-key", "")
    return None


class PrincipalCache:
    """Who a credential belongs to, remembered for ``ttl`` seconds: an account lookup
    costs a store query, as much as a whole small request. Account changes made through
    this process clear it; changes from elsewhere (the CLI) show within ``ttl``."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self.entries: dict[str, tuple[float, Principal]] = {}
        self.lock = threading.Lock()
        # lookups under way, by key (touched by the event loop's thread only)
        self.inflight: dict[str, asyncio.Future[Principal]] = {}

    def get(self, key: str) -> Principal | None:
        with self.lock:
            hit = self.entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, p: Principal) -> None:
        with self.lock:
            if len(self.entries) > 10_000:
                self.entries.clear()
            self.entries[key] = (time.monotonic() + self.ttl, p)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


def _cache_key(cred: tuple[str, str] | str) -> str:
    import hashlib

    text = "\x1f".join(cred) if isinstance(cred, tuple) else cred
    return hashlib.sha256(text.encode()).hexdigest()


def authenticate(request: Request) -> Principal:
    """The caller of this request, or 401; disabled accounts are refused."""
    state = request.app.state
    cred, key, principal = _remembered(request)
    if principal is None:
        principal = _lookup(request, cred)
        state.principals.put(key, principal)
    state.limiter.take(principal.username)
    return principal


def _remembered(request: Request) -> tuple[tuple[str, str] | str, str, Principal | None]:
    """The request's credential, its cache key, and its principal if cached (no I/O)."""
    cred = _credentials(request)
    if cred is None:
        raise ApiError(401, "unauthorized", "authentication required (Bearer token)")
    key = _cache_key(cred)
    return cred, key, request.app.state.principals.get(key)


def _lookup(request: Request, cred: tuple[str, str] | str) -> Principal:
    from archwatch.accounts import verify_password

    state = request.app.state
    accounts: Accounts = state.accounts
    account: Account | None
    if isinstance(cred, tuple):  # password, e.g. an auditor's SQL client
        user, pw = cred
        client = request.client.host if request.client else "?"
        state.throttle.check(f"u:{user}", f"ip:{client}")
        account = accounts.get(user)
        if account is None or not verify_password(account, pw):
            state.throttle.failed(f"u:{user}", f"ip:{client}")
            raise ApiError(401, "unauthorized", "wrong username or password")
        state.throttle.succeeded(f"u:{user}")
    elif cred.startswith(TOKEN_PREFIX):
        account = accounts.by_token(cred)
        if account is None:
            raise ApiError(401, "unauthorized", "unknown API token")
    else:
        try:
            claims = jwt.decode(cred, state.settings.jwt_secret, algorithms=[ALGORITHM])
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "unauthorized", "session expired; log in again") from None
        except jwt.PyJWTError:
            raise ApiError(401, "unauthorized", "invalid token") from None
        account = accounts.get(str(claims.get("sub")))
        if account is None:
            raise ApiError(401, "unauthorized", "unknown account")
    if account.disabled:
        raise ApiError(403, "disabled", "this account is disabled")
    return Principal.of(account)


async def get_principal(request: Request) -> Principal:
    """:func:`authenticate` as a dependency. Async so that a cached principal costs no trip
    through the thread pool (FastAPI runs every sync dependency there, each a hand-over
    between threads under the GIL); a lookup (a store query, a password hash) still runs
    in the pool, off the event loop."""
    from starlette.concurrency import run_in_threadpool

    cred, key, principal = _remembered(request)
    if principal is None:
        # One lookup per credential at a time: when an entry expires under load, the
        # requests that arrive meanwhile (16 clients: 16) wait for it instead of each
        # running its own store query (a burst every ttl, measured in the p99).
        principals: PrincipalCache = request.app.state.principals
        lookup = principals.inflight.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(run_in_threadpool(_lookup, request, cred))
            principals.inflight[key] = lookup
            lookup.add_done_callback(lambda _done: principals.inflight.pop(key, None))
        principal = await asyncio.shield(lookup)  # a caller gone does not cancel the rest
        principals.put(key, principal)
    request.app.state.limiter.take(principal.username)
    return principal


def require(*roles: Role) -> Any:
    async def dep(p: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if p.role not in roles:
            raise ApiError(403, "forbidden", f"requires role {' or '.join(r.value for r in roles)}")
        return p

    return dep


PrincipalDep = Annotated[Principal, Depends(get_principal)]
# Statistics and anomalies: everyone but the administrator (who opens accounts, not cases).
READERS = (Role.city, Role.district, Role.department, Role.system, Role.auditor)
ReaderDep = Annotated[Principal, Depends(require(*READERS))]
AdminDep = Annotated[Principal, Depends(require(Role.sysadmin))]

KPI_COLUMNS = {"qym": "qym", "deptCode": "dept_code", "systemCode": "system_code"}
