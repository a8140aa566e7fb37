"""The web console (/console/): its static files, ECharts from npm, and the knowledge
column (知识专栏) API — Markdown articles written by the system administrator and read by
every logged-in user, rendered to HTML here with everything escaped."""

from __future__ import annotations

import html
import os
import re
import secrets
from enum import StrEnum
from pathlib import Path as FsPath
from typing import Annotated, Any

from archwatch.api.auth import AdminDep, PrincipalDep
from archwatch.api.deps import PageDep, StoreDep
from archwatch.api.errors import ApiError
from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from archwatch.accounts import Accounts
from archwatch.engine import VersionClock
from archwatch.store import Store
from archwatch.timeutil import ch_time, now_ms, to_iso_utc

router = APIRouter()

# --------------------------------------------------------------------------- static files

CONSOLE_DIR = FsPath(os.environ.get("ARCHWATCH_CONSOLE_FILES")
                     or FsPath(__file__).resolve().parents[2] / "console")
ECHARTS = CONSOLE_DIR / "node_modules" / "echarts" / "dist" / "echarts.min.js"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                ".png": "image/png", ".ico": "image/x-icon"}
# the console talks only to this origin; article HTML is escaped, and this is the backstop
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP, "Referrer-Policy": "same-origin"}


def _not_found(path: str) -> ApiError:
    return ApiError(404, "not_found", f"no console file {path!r}")


@router.get("/console", include_in_schema=False)
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/vendor/echarts.min.js", include_in_schema=False)
def echarts() -> FileResponse:
    """ECharts as installed by npm into console/node_modules (scripts/console-setup.sh)."""
    if not ECHARTS.is_file():
        raise ApiError(503, "unavailable",
                       "ECharts is not installed: run scripts/console-setup.sh "
                       "(npm ci in console/) — 图表组件未安装")
    return FileResponse(ECHARTS, media_type=STATIC_TYPES[".js"],
                        headers={"Cache-Control": "public, max-age=86400",
                                 "X-Content-Type-Options": "nosniff"})


@router.get("/console/{path:path}", include_in_schema=False)
def console_file(path: str) -> FileResponse:
    """The console's own files (index.html, js/, css/); nothing else under console/."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        parts = ["index.html"]
    if any(p.startswith(".") or p == "node_modules" for p in parts) \
            or parts[-1].startswith("package"):
        raise _not_found(path)
    target = CONSOLE_DIR.joinpath(*parts)
    media = STATIC_TYPES.get(target.suffix)
    root = CONSOLE_DIR.resolve()
    try:
        resolved = target.resolve()
    except OSError:
        raise _not_found(path) from None
    if media is None or not resolved.is_relative_to(root) or not resolved.is_file():
        raise _not_found(path)
    return FileResponse(resolved, media_type=media, headers=_HEADERS)


# --------------------------------------------------------------------------- Markdown

_SAFE_URL = re.compile(r"^(https?://|mailto:|/|#|\./|\.\./)", re.I)
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<!\*)\*(?=\S)([^*\n]+?)(?<=\S)\*(?!\*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _link(m: re.Match[str]) -> str:
    text, url = m.group(1), m.group(2)
    raw = html.unescape(url)
    if not _SAFE_URL.match(raw) or any(ord(c) < 32 for c in raw):
        return f"{text} ({url})" if raw.lower().startswith(("http", "mailto")) else text
    external = raw.lower().startswith(("http://", "https://"))
    extra = ' target="_blank" rel="noopener noreferrer"' if external else ""
    return f'<a href="{url}"{extra}>{text}</a>'


def render_inline(text: str) -> str:
    """Inline Markdown (code, links, bold, italic) over escaped text: the only tags in the
    result are the ones made here, and link targets are http(s), mailto or relative."""
    out = []
    for i, seg in enumerate(re.split(r"(`[^`\n]+`)", text)):
        if i % 2:
            out.append(f"<code>{html.escape(seg[1:-1])}</code>")
            continue
        s = html.escape(seg)
        s = _LINK.sub(_link, s)
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _ITALIC.sub(r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", s)]


def render_markdown(text: str) -> str:
    """A safe subset of Markdown to HTML: headings, paragraphs, lists, block quotes, code
    blocks, tables, rules and inline marks. Raw HTML in the source is shown as text."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + "<br>".join(render_inline(x.strip()) for x in para) + "</p>")
            para.clear()

    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < n and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        if not stripped:
            flush()
            i += 1
            continue
        if m := _HEADING.match(stripped):
            flush()
            level = len(m.group(1))
            out.append(f"<h{level}>{render_inline(m.group(2))}</h{level}>")
            i += 1
            continue
        if _RULE.match(stripped) and not para:
            out.append("<hr>")
            i += 1
            continue
        if stripped.startswith(">"):
            flush()
            quote = []
            while i < n and lines[i].strip().startswith(">"):
                quote.append(re.sub(r"^\s*>\s?", "", lines[i]))
                i += 1
            out.append("<blockquote>" + render_markdown("\n".join(quote)) + "</blockquote>")
            continue
        if "|" in stripped and i + 1 < n and _TABLE_SEP.match(lines[i + 1]):
            flush()
            head = _cells(line)
            rows = []
            i += 2
            while i < n and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            cells = "".join(f"<th>{render_inline(c)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f"<td>{render_inline(c)}</td>"
                                            for c in r[:len(head)]) + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
            continue
        if m := _ITEM.match(line):
            flush()
            ordered = m.group(2)[0].isdigit()
            items: list[str] = []
            while i < n:
                m = _ITEM.match(lines[i])
                if m and m.group(2)[0].isdigit() == ordered:
                    items.append(m.group(3))
                elif m or not lines[i].strip() or not lines[i].startswith((" ", "\t")) \
                        or not items:
                    break
                else:  # an indented continuation of the item above
                    items[-1] += " " + lines[i].strip()
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{render_inline(x)}</li>" for x in items)
                       + f"</{tag}>")
            continue
        para.append(line)
        i += 1
    flush()
    return "\n".join(out)


# --------------------------------------------------------------------------- articles


class Category(StrEnum):
    standard = "标准解读"
    pitfall = "易错点"


class ArticleIn(BaseModel):
    category: Category = Field(description="标准解读 or 易错点")
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=100_000, description="Markdown")


class MarkdownIn(BaseModel):
    body: str = Field(max_length=100_000)


class ArticleBrief(BaseModel):
    id: str
    category: str
    title: str
    summary: str = Field(description="the first characters of the text, without marks")
    createdBy: str
    updatedBy: str
    createdAt: str
    updatedAt: str


class ArticleOut(ArticleBrief):
    body: str = Field(description="Markdown as written")
    html: str = Field(description="the body rendered to HTML, every source character escaped")


class ArticlePage(BaseModel):
    total: int
    pageNo: int
    pageSize: int
    items: list[ArticleBrief]


ArticleId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_clock = VersionClock()
_COLS = ("article_id, category, title, body, created_by, updated_by,"
         " toUnixTimestamp64Milli(created_at) AS c_ms, toUnixTimestamp64Milli(updated_at) AS u_ms")


def _summary(body: str, limit: int = 120) -> str:
    text = re.sub(r"```.*?```", " ", body, flags=re.S)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[#>*`|_-]+", " ", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["article_id"], "category": r["category"], "title": r["title"],
            "summary": _summary(r["body"]), "createdBy": r["created_by"],
            "updatedBy": r["updated_by"], "createdAt": to_iso_utc(r["c_ms"]),
            "updatedAt": to_iso_utc(r["u_ms"])}


def _get(store: Store, article_id: str) -> dict[str, Any] | None:
    rows = store.query(f"SELECT {_COLS} FROM article FINAL WHERE article_id = {{a:String}}",
                       {"a": article_id})
    return rows[0] if rows else None


def _write(store: Store, article_id: str, body: ArticleIn, created_by: str, created_ms: int,
           updated_by: str, deleted: bool = False) -> None:
    store.insert("article", [{
        "article_id": article_id, "category": body.category.value, "title": body.title,
        "body": body.body, "created_by": created_by, "updated_by": updated_by,
        "created_at": ch_time(created_ms), "updated_at": ch_time(now_ms()),
        "version": _clock.next(), "is_deleted": int(deleted)}])


def _out(r: dict[str, Any]) -> ArticleOut:
    return ArticleOut(**_brief(r), body=r["body"], html=render_markdown(r["body"]))


@router.get("/api/v1/articles", response_model=ArticlePage, tags=["knowledge"])
def list_articles(
    store: StoreDep, p: PrincipalDep, page: PageDep,
    category: Annotated[Category | None, Query(description="标准解读 or 易错点")] = None,
    q: Annotated[str | None, Query(max_length=100, description="words in the title")] = None,
) -> ArticlePage:
    """Knowledge column articles, most recently updated first (every logged-in user)."""
    parts, params = ["1"], {}
    if category is not None:
        parts.append("category = {cat:String}")
        params["cat"] = category.value
    if q:
        parts.append("positionCaseInsensitiveUTF8(title, {q:String}) > 0")
        params["q"] = q
    rows = store.query(
        f"SELECT {_COLS}, count() OVER () AS total FROM article FINAL"
        f" WHERE {' AND '.join(parts)} ORDER BY updated_at DESC, article_id"
        f" LIMIT {page.size} OFFSET {page.offset}", params)
    total = rows[0]["total"] if rows else 0
    if not rows and page.offset:
        total = store.query(f"SELECT count() AS n FROM article FINAL WHERE {' AND '.join(parts)}",
                            params)[0]["n"]
    return ArticlePage(total=total, pageNo=page.no, pageSize=page.size,
                       items=[ArticleBrief(**_brief(r)) for r in rows])


@router.get("/api/v1/articles/{articleId}", response_model=ArticleOut, tags=["knowledge"])
def get_article(articleId: ArticleId, store: StoreDep, p: PrincipalDep) -> ArticleOut:  # noqa: N803
    """One article: its Markdown and the same rendered to safe HTML."""
    r = _get(store, articleId)
    if r is None:
        raise ApiError(404, "not_found", f"no article {articleId!r}")
    return _out(r)


@router.post("/api/v1/articles", response_model=ArticleOut, status_code=201,
             tags=["knowledge"])
def create_article(body: ArticleIn, store: StoreDep, admin: AdminDep) -> ArticleOut:
    """Publish an article (system administrator only)."""
    article_id = "a" + secrets.token_hex(6)
    _write(store, article_id, body, admin.username, now_ms(), admin.username)
    Accounts(store).audit(admin.username, "article.create", article_id, body.title)
    r = _get(store, article_id)
    assert r is not None
    return _out(r)


@router.put("/api/v1/articles/{articleId}", response_model=ArticleOut, tags=["knowledge"])
def update_article(articleId: ArticleId, body: ArticleIn, store: StoreDep,  # noqa: N803
                   admin: AdminDep) -> ArticleOut:
    """Replace an article's category, title and text (system administrator only)."""
    old = _get(store, articleId)
    if old is None:
        raise ApiError(404, "not_found", f"no article {articleId!r}")
    _write(store, articleId, body, old["created_by"], old["c_ms"], admin.username)
    Accounts(store).audit(admin.username, "article.update", articleId, body.title)
    r = _get(store, articleId)
    assert r is not None
    return _out(r)


@router.delete("/api/v1/articles/{articleId}", status_code=204, tags=["knowledge"])
def delete_article(articleId: ArticleId, store: StoreDep, admin: AdminDep) -> Response:  # noqa: N803
    """Remove an article (system administrator only)."""
    old = _get(store, articleId)
    if old is None:
        raise ApiError(404, "not_found", f"no article {articleId!r}")
    _write(store, articleId, ArticleIn(category=old["category"], title=old["title"],
                                       body=old["body"]),
           old["created_by"], old["c_ms"], admin.username, deleted=True)
    Accounts(store).audit(admin.username, "article.delete", articleId, old["title"])
    return Response(status_code=204)


@router.post("/api/v1/articles/preview", tags=["knowledge"])
def preview(body: MarkdownIn, admin: AdminDep) -> dict[str, str]:
    """Markdown rendered as an article would be, for the editor's preview."""
    return {"html": render_markdown(body.body)}
