"""Distribution to the districts: batch reset of push status (seed API), the queue, and
receiver endpoints. The queue and its rules are in :mod:`archwatch.distribution`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Annotated, Any

from archwatch.api.auth import Principal, require
from archwatch.api.deps import PageDep, StoreDep
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from archwatch import distribution as dist
from archwatch.accounts import Accounts, Role
from archwatch.registry import Registry

router = APIRouter(tags=["distribution"])

ResetterDep = Annotated[Principal, Depends(require(Role.sysadmin, Role.city, Role.district))]
ManagerDep = Annotated[Principal, Depends(require(Role.sysadmin, Role.city))]
RID = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]

_UPLOAD_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": ".xlsx or .xls with columns 档号 and 分发号"}}}}}}}


def _envelope(message: str, data: Any, started: float) -> dict[str, Any]:
    return {"code": 200, "message": message, "data": data, "timestamp": int(time.time() * 1000),
            "executeTime": round((time.perf_counter() - started) * 1000)}


async def _upload(request: Request) -> tuple[str, bytes]:
    """The multipart field ``file``: its name and bytes (at most the cap + 1 read)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(400, "invalid_parameter", "file: send multipart/form-data with a file "
                                                 "field named 'file'")
    try:
        form = await request.form(max_files=1, max_fields=20)
    except AssertionError:  # python-multipart missing
        raise ApiError(503, "unavailable", "uploads need the python-multipart package") from None
    except StarletteHTTPException as exc:
        raise ApiError(400, "invalid_parameter", f"file: {exc.detail}") from None
    try:
        item = form.get("file")
        if not isinstance(item, UploadFile):
            raise ApiError(400, "invalid_parameter", "file: a file field named 'file' is needed")
        data = await item.read(dist.MAX_UPLOAD_BYTES + 1)
        return item.filename or "", data
    finally:
        await form.close()


@router.post("/gdtjapi//batchResetPushStatus", openapi_extra=_UPLOAD_DOC,
             include_in_schema=False)
@router.post("/gdtjapi/batchResetPushStatus", openapi_extra=_UPLOAD_DOC)
async def batch_reset_push_status(request: Request, store: StoreDep,
                                  p: ResetterDep) -> dict[str, Any]:
    """Reset the push status of distributions listed in an Excel file (档号 and 分发号
    columns, any order, header within the first rows) to pending, so the distributor sends
    them again in its next cycle. A district resets only distributions to its own region;
    the others count as unmatched. ``data``: the unmatched archive numbers, or null."""
    started = time.perf_counter()
    filename, data = await _upload(request)
    try:
        pairs = await asyncio.to_thread(dist.read_reset_sheet, data, filename)
    except dist.UploadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None

    def apply() -> dist.ResetResult:
        result = dist.DistributionQueue(store).reset(pairs, p.username, p.qym)
        detail = {"file": filename, "sha256": hashlib.sha256(data).hexdigest(),
                  "rows": len(pairs), "scope": p.qym or None,
                  "reset": [{"distributionNo": d.distribution_no, "archiveNo": d.archive_no}
                            for d in result.reset],
                  "unmatched": result.unmatched}
        Accounts(store).audit(p.username, "distribution.reset", filename or "(upload)",
                              json.dumps(detail, ensure_ascii=False))
        return result

    result = await asyncio.to_thread(apply)
    if not result.unmatched:
        return _envelope("操作成功", None, started)
    return _envelope(f"操作成功，其中{len(result.unmatched)}条档号未匹配到分发记录",
                     result.unmatched, started)


ListerDep = Annotated[Principal, Depends(require(Role.sysadmin, Role.city, Role.district,
                                                 Role.auditor))]


@router.get("/api/v1/distributions")
def list_distributions(
    store: StoreDep, p: ListerDep, page: PageDep,
    status: Annotated[str | None, Query(pattern="^(pending|sent|acked|failed)$")] = None,
    archiveNo: Annotated[str | None, Query(max_length=256)] = None,  # noqa: N803
    qym: Annotated[str | None, Query(pattern=r"^\d{6}$")] = None,
) -> dict[str, Any]:
    """The distribution queue (a district and a scoped auditor see their region only)."""
    f = p.narrow({"qym": qym}) if p.qym else {"qym": qym}
    rows, total = dist.DistributionQueue(store).list(status, f.get("qym"), archiveNo,
                                                     page.size, page.offset)
    return {"items": [d.public() for d in rows], "total": total, "pageNo": page.no,
            "pageSize": page.size}


class EndpointIn(BaseModel):
    url: str = Field(max_length=2048, description="http(s) URL receiving POSTed packages; "
                                                  "empty to remove")


@router.put("/api/v1/receivers/{receiverId}/endpoint")
def put_endpoint(receiverId: RID, body: EndpointIn, store: StoreDep,  # noqa: N803
                 who: ManagerDep) -> dict[str, Any]:
    """Where the distributor sends a receiver's packages (POST JSON {distributionNo,
    archiveNo, caseNo, targetQym}; any 2xx acknowledges)."""
    if Registry(store).get(receiverId) is None:
        raise ApiError(404, "not_found", f"no receiver {receiverId!r}")
    try:
        dist.set_endpoint(store, receiverId, body.url)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    Accounts(store).audit(who.username, "receiver.endpoint", receiverId, body.url)
    return {"receiverId": receiverId, "url": body.url or None}


@router.get("/api/v1/receivers/{receiverId}/endpoint")
def get_endpoint(receiverId: RID, store: StoreDep, who: ManagerDep) -> dict[str, Any]:  # noqa: N803
    if Registry(store).get(receiverId) is None:
        raise ApiError(404, "not_found", f"no receiver {receiverId!r}")
    return {"receiverId": receiverId, "url": dist.load_endpoints(store).get(receiverId)}
