"""Accounts, roles and scopes: opened by the administrator, stored in ClickHouse.

Passwords are argon2id hashes; API tokens (third-party systems) are random, shown once,
and stored as SHA-256 (they are high-entropy, so a fast hash is safe and allows lookup).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from archwatch.engine import VersionClock
from archwatch.store import Store
from archwatch.timeutil import ch_time, now_ms

TOKEN_PREFIX = "aw_"
_hasher = PasswordHasher()
_clock = VersionClock()


class Role(StrEnum):
    sysadmin = "sysadmin"
    city = "city"  # city archive officials: everything
    district = "district"  # own qym only
    department = "department"  # own deptCode
    system = "system"  # third-party system: own deptCode or systemCode, API token
    auditor = "auditor"  # read-only SQL, optionally scoped by qym


class AccountError(ValueError):
    """A request the account rules refuse (clear message for CLI and API)."""


@dataclass(frozen=True)
class Account:
    username: str
    role: Role
    qym: str = ""
    dept_code: str = ""
    system_code: str = ""
    password_hash: str = ""
    token_hash: str = ""
    disabled: bool = False
    created_at: int = 0

    def public(self) -> dict[str, Any]:
        return {"username": self.username, "role": self.role.value, "qym": self.qym or None,
                "deptCode": self.dept_code or None, "systemCode": self.system_code or None,
                "disabled": self.disabled, "hasPassword": bool(self.password_hash),
                "hasToken": bool(self.token_hash)}


def validate_scope(role: Role, qym: str, dept_code: str, system_code: str) -> None:
    if role is Role.district and not qym:
        raise AccountError("a district account needs its qym")
    if role is Role.department and not dept_code:
        raise AccountError("a department account needs its deptCode")
    if role is Role.system and not (dept_code or system_code):
        raise AccountError("a system account needs a deptCode or a systemCode")
    if role in (Role.sysadmin, Role.city) and (qym or dept_code or system_code):
        raise AccountError(f"a {role.value} account has no scope")
    if role is Role.auditor and (dept_code or system_code):
        raise AccountError("an auditor is scoped by qym only")
    if qym and not (len(qym) == 6 and qym.isdigit()):
        raise AccountError("qym: a six-digit region code")
    for name, value in (("deptCode", dept_code), ("systemCode", system_code)):
        if value and not all(ch.isalnum() or ch in "-_." for ch in value):
            raise AccountError(f"{name}: letters, digits, '-', '_' or '.'")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_password() -> str:
    return secrets.token_urlsafe(12)


def verify_password(account: Account, password: str) -> bool:
    if not account.password_hash:
        return False
    try:
        return _hasher.verify(account.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class Accounts:
    """The account table behind one small interface (CLI and admin API share it)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _write(self, a: Account) -> None:
        now = now_ms()
        self.store.insert("account", [{
            "username": a.username, "role": a.role.value, "qym": a.qym,
            "dept_code": a.dept_code, "system_code": a.system_code,
            "password_hash": a.password_hash, "token_hash": a.token_hash,
            "disabled": int(a.disabled), "created_at": ch_time(a.created_at or now),
            "updated_at": ch_time(now), "version": _clock.next(),
        }])

    @staticmethod
    def _from_row(r: dict[str, Any]) -> Account:
        return Account(r["username"], Role(r["role"]), r["qym"], r["dept_code"],
                       r["system_code"], r["password_hash"], r["token_hash"],
                       bool(r["disabled"]), r["created"])

    _COLS = ("username, role, qym, dept_code, system_code, password_hash, token_hash, disabled,"
             " toUnixTimestamp64Milli(created_at) AS created")

    def get(self, username: str) -> Account | None:
        rows = self.store.query(f"SELECT {self._COLS} FROM account FINAL "
                                "WHERE username = {u:String}", {"u": username})
        return self._from_row(rows[0]) if rows else None

    def by_token(self, token: str) -> Account | None:
        rows = self.store.query(f"SELECT {self._COLS} FROM account FINAL "
                                "WHERE token_hash = {h:String} LIMIT 1", {"h": hash_token(token)})
        return self._from_row(rows[0]) if rows else None

    def list(self) -> list[Account]:
        return [self._from_row(r) for r in
                self.store.query(f"SELECT {self._COLS} FROM account FINAL ORDER BY username")]

    def create(self, username: str, role: Role, qym: str = "", dept_code: str = "",
               system_code: str = "", password: str | None = None,
               actor: str = "cli") -> tuple[Account, str]:
        """Open an account; returns it and its secret (password, or API token for a
        third-party system), which is shown once and never stored in clear."""
        if not username or len(username) > 64 or not username.replace("-", "").replace(
                "_", "").replace(".", "").isalnum():
            raise AccountError("username: 1-64 letters, digits, '-', '_' or '.'")
        validate_scope(role, qym, dept_code, system_code)
        if self.get(username) is not None:
            raise AccountError(f"account {username!r} exists")
        if role is Role.system:
            secret = new_token()
            a = Account(username, role, qym, dept_code, system_code, token_hash=hash_token(secret))
        else:
            secret = password or new_password()
            if len(secret) < 10:
                raise AccountError("password: at least 10 characters")
            a = Account(username, role, qym, dept_code, system_code,
                        password_hash=_hasher.hash(secret))
        self._write(a)
        self._provision(a, secret)
        self.audit(actor, "account.create", username, f"role={role.value}")
        return a, secret

    def _provision(self, a: Account, secret: str) -> None:
        """On a ClickHouse server, an auditor is also a server user under row policies."""
        from archwatch.store import ServerStore

        if a.role is not Role.auditor or not isinstance(self.store, ServerStore):
            return
        from archwatch.server_access import auditor_statements, role_statements

        for stmt in role_statements() + auditor_statements(a.username, secret, a.qym):
            self.store.command(stmt)

    def set_disabled(self, username: str, disabled: bool, actor: str = "cli") -> Account:
        a = self._require(username)
        a = replace(a, disabled=disabled)
        self._write(a)
        self.audit(actor, "account.disable" if disabled else "account.enable", username, "")
        return a

    def rekey(self, username: str, password: str | None = None,
              actor: str = "cli") -> tuple[Account, str]:
        """New password (or new API token): the old one stops working at once."""
        a = self._require(username)
        if a.role is Role.system:
            secret = new_token()
            a = replace(a, token_hash=hash_token(secret))
        else:
            secret = password or new_password()
            if len(secret) < 10:
                raise AccountError("password: at least 10 characters")
            a = replace(a, password_hash=_hasher.hash(secret))
        self._write(a)
        self.audit(actor, "account.rekey", username, "")
        return a, secret

    def _require(self, username: str) -> Account:
        a = self.get(username)
        if a is None:
            raise AccountError(f"no account {username!r}")
        return a

    def audit(self, actor: str, action: str, target: str, detail: str) -> None:
        self.store.insert("audit_log", [{"at": ch_time(now_ms()), "actor": actor,
                                         "action": action, "target": target,
                                         "detail": detail}])
