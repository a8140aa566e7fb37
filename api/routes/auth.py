"""Login and the caller's own identity."""

from __future__ import annotations

from archwatch.api.auth import Principal, PrincipalDep, issue_token
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from archwatch.accounts import Accounts, verify_password

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class Session(BaseModel):
    accessToken: str
    tokenType: str = "bearer"
    expiresAt: int = Field(description="Unix seconds")
    role: str


@router.post("/login", response_model=Session)
def login(body: Login, request: Request) -> Session:
    """Exchange a username and password for a session token (throttled on failures)."""
    state = request.app.state
    client = request.client.host if request.client else "?"
    keys = (f"u:{body.username}", f"ip:{client}")
    state.throttle.check(*keys)
    accounts: Accounts = state.accounts
    account = accounts.get(body.username)
    if account is None or not verify_password(account, body.password):
        state.throttle.failed(*keys)
        raise ApiError(401, "unauthorized", "wrong username or password")
    if account.disabled:
        raise ApiError(403, "disabled", "this account is disabled")
    state.throttle.succeeded(keys[0])
    token, exp = issue_token(Principal.of(account), state.settings.jwt_secret,
                             state.settings.session_ttl)
    return Session(accessToken=token, expiresAt=exp, role=account.role.value)


@router.get("/me")
def me(p: PrincipalDep) -> dict[str, str | None]:
    """Who the token belongs to and the scope every answer is filtered by."""
    return {"username": p.username, "role": p.role.value, "qym": p.qym or None,
            "deptCode": p.dept_code or None, "systemCode": p.system_code or None}
