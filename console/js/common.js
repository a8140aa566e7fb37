// Pieces shared by the pages: KPI tables with server-side sorting, pagination, the year
// selector, breadcrumbs and error boxes.

import { describe, get } from "./api.js";
import { days, h, num, pct, route, when } from "./util.js";

export const PAGE_SIZE = 20;
const YEAR_KEY = "archwatch.year";

let yearsCache = null;

// The years that have cases (newest first), from /api/v1/stats?groupBy=year.
export async function years() {
  if (yearsCache) return yearsCache;
  const res = await get("/api/v1/stats", { groupBy: "year", pageSize: 200 });
  yearsCache = res.items.map((r) => r.key.year).sort().reverse();
  return yearsCache;
}

export function forgetYears() {
  yearsCache = null;
}

// The year a page shows: ?year=… (""=all years), else the last one chosen, else the newest.
export async function chosenYear(query) {
  if ("year" in query) {
    sessionStorage.setItem(YEAR_KEY, query.year);
    return query.year;
  }
  const saved = sessionStorage.getItem(YEAR_KEY);
  const ys = await years();
  if (saved !== null && (saved === "" || ys.includes(saved))) return saved;
  return ys[0] || "";
}

export function yearSelect(current, onChange) {
  const sel = h("select", { "aria-label": "年度", "data-testid": "year",
    onchange: (e) => onChange(e.target.value) });
  const ys = yearsCache || [];
  sel.appendChild(h("option", { value: "", selected: current === "" }, "全部年度"));
  for (const y of ys) sel.appendChild(h("option", { value: y, selected: y === current }, `${y} 年`));
  return h("label", { class: "field" }, "年度 ", sel);
}

export function errorBox(err) {
  return h("div", { class: "alert alert-bad", role: "alert", "data-testid": "error" },
    describe(err));
}

export function breadcrumbs(items) {
  const nav = h("nav", { class: "crumbs", "aria-label": "位置" });
  items.forEach(([label, href], i) => {
    if (i) nav.appendChild(h("span", { class: "sep" }, "›"));
    nav.appendChild(href ? h("a", { href }, label) : h("span", { class: "here" }, label));
  });
  return nav;
}

export function pager(total, pageNo, pageSize, hrefOf) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  const box = h("div", { class: "pager", "data-testid": "pager" },
    `共 ${num(total)} 条，第 ${pageNo} / ${pages} 页 `);
  const btn = (label, p, disabled) => disabled
    ? h("span", { class: "btn btn-small disabled" }, label)
    : h("a", { class: "btn btn-small", href: hrefOf(p) }, label);
  box.append(btn("首页", 1, pageNo <= 1), btn("上一页", pageNo - 1, pageNo <= 1),
    btn("下一页", pageNo + 1, pageNo >= pages), btn("末页", pages, pageNo >= pages));
  return box;
}

// Sortable header cell: clicking it sorts on the server by `field`
function th(label, field, sort, order, hrefOf, title, numeric = true) {
  const active = sort === field;
  const next = active && order === "asc" ? "desc" : "asc";
  const arrow = active ? (order === "asc" ? " ▲" : " ▼") : "";
  const cls = [active ? "sorted" : "", numeric ? "num" : ""].join(" ").trim();
  return h("th", { class: cls || null, title, "aria-sort": active
    ? (order === "asc" ? "ascending" : "descending") : null },
  h("a", { href: hrefOf(field, next), "data-sort": field }, label + arrow));
}

// A table of KPI groups (/api/v1/stats and /api/v1/drill/...) whose rows link one level down.
export function kpiTable({ items, nameOf, linkOf, keyLabel, sort, order, hrefOf, rank0 = 0,
  testid }) {
  const head = h("tr", {},
    h("th", { class: "num" }, "序号"),
    th(keyLabel, "key", sort, order, hrefOf, null, false),
    th("应归档", "kpi", sort, order, hrefOf, "应归档办件数"),
    th("已归档", "archived", sort, order, hrefOf),
    th("未归档", "unArchived", sort, order, hrefOf),
    th("归档率", "archiveRate", sort, order, hrefOf, "已归档 / 应归档"),
    th("归档周期（天）", "timeDiff", sort, order, hrefOf, "办结到首次接收的平均天数"),
    th("错误数", "archivedFail", sort, order, hrefOf),
    th("归档错误率", "errorRate", sort, order, hrefOf, "有错误的已归档办件 / 已归档"),
    h("th", {}, "最近接收"));
  const body = h("tbody", {});
  items.forEach((r, i) => {
    const href = linkOf ? linkOf(r) : null;
    const name = nameOf(r);
    body.appendChild(h("tr", { class: href ? "clickable" : "", dataset: { key: JSON.stringify(r.key) } },
      h("td", { class: "num" }, rank0 + i + 1),
      h("td", {}, href ? h("a", { href, class: "drill-link" }, name) : name),
      h("td", { class: "num" }, num(r.kpi)),
      h("td", { class: "num" }, num(r.archived)),
      h("td", { class: "num" }, num(r.unArchived)),
      h("td", { class: "num" }, rateCell(r.archiveRate)),
      h("td", { class: "num" }, days(r.timeDiff)),
      h("td", { class: "num" }, num(r.archivedFail)),
      h("td", { class: "num" }, pct(r.errorRate)),
      h("td", { class: "nowrap" }, r.lastReceive || "—")));
  });
  if (!items.length) {
    body.appendChild(h("tr", {}, h("td", { colspan: 10, class: "muted center" }, "暂无数据")));
  }
  return h("table", { class: "table", "data-testid": testid || "kpi-table" },
    h("thead", {}, head), body);
}

function rateCell(rate) {
  const cls = rate >= 0.95 ? "good" : rate >= 0.8 ? "warn" : "bad";
  return h("span", { class: `rate rate-${cls}` }, pct(rate));
}

export function kv(pairs) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of pairs) dl.append(h("dt", {}, k), h("dd", {}, v ?? "—"));
  return dl;
}

export function pageHeader(title, ...extra) {
  return h("div", { class: "page-head" }, h("h2", {}, title), ...extra);
}

export { route, when };
