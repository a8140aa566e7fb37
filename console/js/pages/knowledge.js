// 知识专栏: 标准解读 and 易错点 articles (Markdown). The server renders Markdown to HTML with
// every source character escaped; only that HTML is ever inserted as HTML.

import { del, describe, get, post, put, session } from "../api.js";
import { breadcrumbs, pageHeader, pager } from "../common.js";
import { badge, clear, h, route, when } from "../util.js";

const ENC = encodeURIComponent;
const CATEGORIES = ["标准解读", "易错点"];
const SIZE = 10;

const isAdmin = () => ((session.get() || {}).me || {}).role === "sysadmin";

export async function knowledgeList(ctx) {
  const { main, query, go } = ctx;
  const cat = CATEGORIES.includes(query.category) ? query.category : "";
  const q = query.q || "";
  const pageNo = Math.max(1, Number(query.page) || 1);
  const res = await get("/api/v1/articles", { category: cat || undefined, q: q || undefined,
    pageNo, pageSize: SIZE });
  const here = (x) => route(["knowledge"], { category: cat, q, page: pageNo, ...x });
  const search = h("input", { type: "search", value: q, placeholder: "按标题搜索", "aria-label": "搜索" });
  main.append(pageHeader("知识专栏",
    h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); go(here({ q: search.value, page: 1 })); } },
      search, h("button", { class: "btn", type: "submit" }, "搜索")),
    isAdmin() ? h("a", { class: "btn btn-primary", href: route(["knowledge", "new"]), "data-testid": "new-article" }, "新建文章") : null));
  main.append(h("div", { class: "tabs" }, ["", ...CATEGORIES].map((c) => h("a", {
    href: here({ category: c, page: 1 }), class: c === cat ? "tab active" : "tab" }, c || "全部"))));
  const list = h("div", { class: "articles", "data-testid": "articles" });
  for (const a of res.items) {
    list.append(h("article", { class: "card article-brief" },
      h("h3", {}, badge(a.category, a.category === "易错点" ? "warn" : "info"), " ",
        h("a", { href: route(["knowledge", a.id]) }, a.title)),
      h("p", {}, a.summary),
      h("p", { class: "muted small" }, `${a.updatedBy} 更新于 ${when(a.updatedAt)}`)));
  }
  if (!res.items.length) list.append(h("p", { class: "muted" }, "暂无文章。"));
  main.append(list, pager(res.total, pageNo, SIZE, (p) => here({ page: p })));
}

export async function knowledgeView(ctx) {
  const { main, go } = ctx;
  const [id] = ctx.params;
  const a = await get(`/api/v1/articles/${ENC(id)}`);
  main.append(breadcrumbs([["知识专栏", route(["knowledge"])], [a.category, route(["knowledge"], { category: a.category })], [a.title]]));
  const actions = isAdmin() ? [
    h("a", { class: "btn", href: route(["knowledge", id, "edit"]), "data-testid": "edit-article" }, "编辑"),
    h("button", { class: "btn btn-danger", onclick: async () => {
      if (!window.confirm(`删除文章「${a.title}」？`)) return;
      await del(`/api/v1/articles/${ENC(id)}`);
      go(route(["knowledge"]));
    } }, "删除")] : [];
  main.append(pageHeader(a.title, badge(a.category, a.category === "易错点" ? "warn" : "info"), ...actions));
  main.append(h("p", { class: "muted small" },
    `${a.createdBy} 创建于 ${when(a.createdAt)}；${a.updatedBy} 更新于 ${when(a.updatedAt)}`));
  const body = h("div", { class: "card article-body", "data-testid": "article-body" });
  body.innerHTML = a.html; // rendered and escaped by the server (render_markdown)
  main.append(body);
}

export async function knowledgeEdit(ctx) {
  const { main, go } = ctx;
  const [id] = ctx.params;
  const editing = id && id !== "new";
  if (!isAdmin()) {
    main.append(h("div", { class: "alert alert-warn" }, "只有系统管理员可以编写知识专栏文章。"));
    return;
  }
  const a = editing ? await get(`/api/v1/articles/${ENC(id)}`)
    : { category: "标准解读", title: "", body: "" };
  const category = h("select", { name: "category", "data-testid": "article-category" },
    CATEGORIES.map((c) => h("option", { value: c, selected: c === a.category }, c)));
  const title = h("input", { name: "title", value: a.title, required: true, maxlength: 200,
    class: "wide", "data-testid": "article-title" });
  const body = h("textarea", { name: "body", rows: 18, class: "wide mono", "data-testid": "article-text" });
  body.value = a.body;
  const previewBox = h("div", { class: "card article-body preview" }, h("p", { class: "muted" }, "点击“预览”查看效果。"));
  const msg = h("div", {});
  const form = h("form", { class: "card form", onsubmit: async (e) => {
    e.preventDefault();
    clear(msg);
    const payload = { category: category.value, title: title.value, body: body.value };
    try {
      const saved = editing ? await put(`/api/v1/articles/${ENC(id)}`, payload)
        : await post("/api/v1/articles", payload);
      go(route(["knowledge", saved.id]));
    } catch (err) {
      msg.append(h("div", { class: "alert alert-bad" }, describe(err)));
    }
  } },
  h("label", { class: "field block" }, "栏目 ", category),
  h("label", { class: "field block" }, "标题 ", title),
  h("label", { class: "field block" }, "正文（Markdown：# 标题、**粗体**、- 列表、> 引用、| 表格 |、```代码```、[链接](https://…)）", body),
  h("div", { class: "actions" },
    h("button", { class: "btn", type: "button", onclick: async () => {
      try {
        const r = await post("/api/v1/articles/preview", { body: body.value });
        previewBox.innerHTML = r.html; // escaped by the server
      } catch (err) {
        clear(previewBox).append(h("div", { class: "alert alert-bad" }, describe(err)));
      }
    } }, "预览"),
    h("button", { class: "btn btn-primary", type: "submit", "data-testid": "save-article" }, editing ? "保存修改" : "发布")),
  msg);
  main.append(breadcrumbs([["知识专栏", route(["knowledge"])], [editing ? "编辑文章" : "新建文章"]]),
    pageHeader(editing ? `编辑：${a.title}` : "新建文章"), h("div", { class: "grid2" }, form, previewBox));
}
