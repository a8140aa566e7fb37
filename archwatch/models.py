"""Pydantic v2 models of every event in the contract (§2), and the record parser.

The parser is the only gate between untrusted bytes and the engine: it never raises,
it returns either a validated :class:`Envelope` or a :class:`Reject` carrying the
reason, the original text and the source position, so one bad record never stops a run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import SchemaValidator, core_schema

from archwatch.timeutil import TimeFormatError, matched_ts, parse_ts


def _ts(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError("timestamp must be an RFC 3339 string")
    try:
        return parse_ts(value)
    except TimeFormatError as exc:
        raise ValueError(str(exc)) from None


Timestamp = Annotated[int, BeforeValidator(_ts)]
"""RFC 3339 text with offset on the wire, epoch milliseconds once validated."""

Key = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = str


class _Event(BaseModel):
    # strict: "payload fields are strings" — no silent 123 → "123" coercion.
    # extra="allow": unknown extra fields are kept and ignored (§2).
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    eventId: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    occurredAt: Timestamp
    source: Text


class CaseCompleted(_Event):
    type: Literal["case.completed"]
    caseNo: Key
    taskId: Text
    taskCode: Text
    taskName: Text
    deptCode: Text
    deptName: Text
    qym: Text
    area: Text
    systemCode: Text
    systemName: Text
    systemLevel: Literal["国", "省", "市"]
    completedAt: Timestamp


class ProvincePushed(_Event):
    type: Literal["province.pushed"]
    caseNo: Key
    batchNo: Key
    targetQym: Text


class ArchiveReceived(_Event):
    type: Literal["archive.received"]
    caseNo: Key
    archiveNo: Key
    receiverQym: Text
    packageSha256: Text
    meta: dict[str, Any]


class ArchiveChecked(_Event):
    type: Literal["archive.checked"]
    archiveNo: Key
    caseNo: Key
    passed: bool
    failedItems: list[str]


class ArchiveBackedUp(_Event):
    type: Literal["archive.backedUp"]
    archiveNo: Key
    caseNo: Key
    backupId: Key
    sha256: Text


class ArchiveDistributed(_Event):
    type: Literal["archive.distributed"]
    archiveNo: Key
    caseNo: Key
    distributionNo: Key
    targetQym: Text
    status: Literal["sent", "acked", "failed"]


class ReceiverHeartbeat(_Event):
    type: Literal["receiver.heartbeat"]
    receiverId: Key
    qym: Text
    status: Literal["ok", "degraded"] | None = None
    version: Text | None = None


class InterfaceError(_Event):
    type: Literal["interface.error"]
    receiverId: Key
    qym: Text
    endpoint: Text
    errorCode: Text
    message: Text


CaseEvent = (
    CaseCompleted | ProvincePushed | ArchiveReceived | ArchiveChecked | ArchiveBackedUp
    | ArchiveDistributed
)
ReceiverEvent = ReceiverHeartbeat | InterfaceError
Event = CaseEvent | ReceiverEvent

EVENT_TYPES: dict[str, type[_Event]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (
        CaseCompleted, ProvincePushed, ArchiveReceived, ArchiveChecked, ArchiveBackedUp,
        ArchiveDistributed, ReceiverHeartbeat, InterfaceError,
    )
}

# Default Kafka topic of each type (contract §2); all are configurable.
TOPIC_OF_TYPE: dict[str, str] = {
    "case.completed": "archive.cases",
    "province.pushed": "archive.pushes",
    "archive.received": "archive.receipts",
    "archive.checked": "archive.receipts",
    "archive.backedUp": "archive.receipts",
    "archive.distributed": "archive.distributions",
    "receiver.heartbeat": "archive.heartbeats",
    "interface.error": "archive.heartbeats",
}

_ADAPTER: TypeAdapter[Event] = TypeAdapter(
    Annotated[Event, Field(discriminator="type")]  # type: ignore[arg-type]
)


# The fast path (see parse_record). timeutil's pattern, with ASCII digits only and `$` at
# the very end of the text (Rust regex): every string this accepts, the Python pattern
# accepts too, with each field at the same fixed position.
_RFC3339_ASCII = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _fast_validator(model: type[_Event]) -> tuple[SchemaValidator, tuple[str, ...]]:
    """A validator building ``model`` instances with every timestamp field checked
    against the RFC 3339 pattern in pydantic-core and left as text (the caller converts
    it with :func:`matched_ts`): a Python ``BeforeValidator`` per timestamp called from
    pydantic-core cost more than the rest of the model's validation.

    Built from the model's own core schema, only the timestamp fields swapped, so every
    other field keeps exactly its checks."""
    schema = dict(model.__pydantic_core_schema__)
    assert schema["type"] == "model" and schema["schema"]["type"] == "model-fields"
    inner = dict(schema["schema"])
    fields = dict(inner["fields"])
    ts_fields = []
    for name, field in fields.items():
        fs = field["schema"]
        if fs.get("type") == "function-before" and fs["function"]["function"] is _ts:
            fields[name] = {**field, "schema": core_schema.str_schema(
                pattern=_RFC3339_ASCII, strict=True)}
            ts_fields.append(name)
    assert "occurredAt" in ts_fields, model
    inner["fields"] = fields
    schema["schema"] = inner
    # pydantic-core reuses a complete model class's own validator for any schema naming
    # that class ("prebuilt"), which would bring the Python timestamp validators back;
    # it checks the class's __pydantic_complete__, so hide that while building.
    model.__pydantic_complete__ = False
    try:
        validator = SchemaValidator(schema)  # type: ignore[arg-type]
    finally:
        model.__pydantic_complete__ = True
    return validator, tuple(ts_fields)


_FAST: dict[str, tuple[SchemaValidator, tuple[str, ...]]] = {
    etype: _fast_validator(model) for etype, model in EVENT_TYPES.items()
}


def _fast_event(etype: str, obj: dict[str, Any]) -> Event | None:
    """The event if the fast validator accepts ``obj``, else None (the caller then runs
    the reference validator, which gives the reason)."""
    validator, ts_fields = _FAST[etype]
    try:
        event = validator.validate_python(obj)
        values = event.__dict__
        for name in ts_fields:
            values[name] = matched_ts(values[name])
    except (ValueError, IndexError, TypeError):  # ValidationError, TimeFormatError; any
        return None  # other surprise also falls back to the reference, never out of the parser
    return event  # type: ignore[no-any-return]


class Envelope(NamedTuple):
    """A validated event plus what the engine needs to count, dedup and log it. A named
    tuple (immutable, built in C): one is made for every record."""

    event: Event
    raw: str  # the original record text, kept for the event log and rejects
    pos: str  # source position: "file:line" or "topic/partition/offset"
    digest: bytes  # hash of the parsed JSON, to tell a redelivery from a reused eventId


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that failed validation (or reused an eventId): never applied, never lost."""

    reason: str
    raw: str
    pos: str

    def to_json(self) -> str:
        return json.dumps(
            {"reason": self.reason, "raw": self.raw, "position": self.pos}, ensure_ascii=False
        )


def payload_digest(obj: dict[str, Any]) -> bytes:
    """Digest of the parsed JSON object, insensitive to key order and whitespace."""
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS),
                           digest_size=12).digest()


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"] if p not in EVENT_TYPES)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_record(raw: str | bytes, pos: str) -> Envelope | Reject:
    """Validate one record; never raises."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return Reject("not valid UTF-8", bytes(raw).decode("utf-8", "replace"), pos)
    else:
        text = raw
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Reject(f"not valid JSON: {exc.msg}", text, pos)
    if not isinstance(obj, dict):
        return Reject(f"not a JSON object: {type(obj).__name__}", text, pos)
    etype = obj.get("type")
    if etype not in EVENT_TYPES:
        reason = "type: missing" if etype is None else f"type: unknown event type {etype!r}"
        return Reject(reason, text, pos)
    # Fast path first: it accepts only what the reference validator (_ADAPTER) accepts,
    # with an equal event (tests/test_models_fast.py); anything else, valid or not, goes
    # through the reference, so the accepted set and every reject reason stay its own.
    event = _fast_event(etype, obj)
    if event is None:
        try:
            event = _ADAPTER.validate_python(obj)
        except ValidationError as exc:
            return Reject(_reason(exc), text, pos)
    return Envelope(event, text, pos, payload_digest(obj))
