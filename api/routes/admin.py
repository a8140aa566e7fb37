"""Accounts, opened and managed by the system administrator only."""

from __future__ import annotations

from typing import Annotated, Any

from archwatch.api.auth import AdminDep
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from archwatch.accounts import AccountError, Accounts, Role

router = APIRouter(prefix="/api/v1/admin/users", tags=["admin"])
Username = Annotated[str, Path(min_length=1, max_length=64)]


class NewAccount(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    role: Role
    qym: str | None = None
    deptCode: str | None = None
    systemCode: str | None = None
    password: str | None = Field(default=None, min_length=10, max_length=256)


class Rekey(BaseModel):
    password: str | None = Field(default=None, min_length=10, max_length=256)


def _accounts(request: Request) -> Accounts:
    request.app.state.principals.clear()  # a change here must take effect at once
    return request.app.state.accounts


def _refuse(exc: AccountError) -> ApiError:
    return ApiError(409 if "exists" in str(exc) else 404 if "no account" in str(exc) else 400,
                    "invalid_account", str(exc))


@router.get("")
def list_users(admin: AdminDep, request: Request) -> list[dict[str, Any]]:
    """Every account, without secrets."""
    return [a.public() for a in _accounts(request).list()]


@router.post("", status_code=201)
def create_user(body: NewAccount, admin: AdminDep, request: Request) -> dict[str, Any]:
    """Open an account; its password (or API token) is in this response only."""
    try:
        account, secret = _accounts(request).create(
            body.username, body.role, body.qym or "", body.deptCode or "", body.systemCode or "",
            body.password, actor=admin.username)
    except AccountError as exc:
        raise _refuse(exc) from None
    key = "token" if account.role is Role.system else "password"
    return {**account.public(), key: secret}


@router.post("/{username}/disable")
def disable_user(username: Username, admin: AdminDep, request: Request) -> dict[str, Any]:
    """Disable an account: its sessions and tokens stop working at once."""
    try:
        return _accounts(request).set_disabled(username, True, actor=admin.username).public()
    except AccountError as exc:
        raise _refuse(exc) from None


@router.post("/{username}/enable")
def enable_user(username: Username, admin: AdminDep, request: Request) -> dict[str, Any]:
    """Enable a disabled account again."""
    try:
        return _accounts(request).set_disabled(username, False, actor=admin.username).public()
    except AccountError as exc:
        raise _refuse(exc) from None


@router.post("/{username}/rekey")
def rekey_user(username: Username, body: Rekey, admin: AdminDep,
               request: Request) -> dict[str, Any]:
    """New password (or API token), shown once; the old one stops working."""
    try:
        account, secret = _accounts(request).rekey(username, body.password,
                                                   actor=admin.username)
    except AccountError as exc:
        raise _refuse(exc) from None
    key = "token" if account.role is Role.system else "password"
    return {**account.public(), key: secret}
