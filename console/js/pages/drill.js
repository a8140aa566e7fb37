// Drill-down, both chains, every level sortable (on the server) and paginated:
//   区县 → 部门 → 事项 → 办件      /api/v1/drill/regions/...
//   层级（国/省/市）→ 系统 → 事项 → 办件   /api/v1/drill/levels/..., /drill/systems/...

import { get } from "../api.js";
import { breadcrumbs, chosenYear, kpiTable, PAGE_SIZE, pageHeader, pager, yearSelect } from "../common.js";
import { h, LEVELS, regionName, route, STATUSES, statusBadge, when } from "../util.js";

const ENC = encodeURIComponent;

async function level(ctx, { parts, title, crumbs, endpoint, keyLabel, nameOf, linkOf,
  keep = {} }) {
  const { main, query, go } = ctx;
  const year = await chosenYear(query);
  const sort = query.sort || "archiveRate";
  const order = query.order || "asc";
  const pageNo = Math.max(1, Number(query.page) || 1);
  const res = await get(endpoint, { year: year || undefined, sort, order, pageNo,
    pageSize: PAGE_SIZE });
  const here = (q) => route(parts, { ...keep, year, sort, order, page: pageNo, ...q });
  main.append(breadcrumbs(crumbs(year)));
  main.append(pageHeader(title, yearSelect(year, (y) => go(here({ year: y, page: 1 }))),
    h("span", { class: "muted small" }, "默认按归档率升序（最差在前）；点击表头切换排序")));
  main.append(h("section", { class: "card" }, kpiTable({
    items: res.items, keyLabel, sort, order, nameOf, linkOf: (r) => linkOf(r, year),
    rank0: (pageNo - 1) * PAGE_SIZE, testid: "drill-table",
    hrefOf: (field, next) => here({ sort: field, order: next, page: 1 }),
  }), pager(res.total, pageNo, PAGE_SIZE, (p) => here({ page: p }))));
}

const home = (year) => [["总览", route(["overview"], { year })]];

export async function regions(ctx) {
  await level(ctx, {
    parts: ["drill", "regions"], title: "区域下钻：区县", keyLabel: "区县",
    endpoint: "/api/v1/drill/regions",
    crumbs: (year) => [...home(year), ["区县"]],
    nameOf: (r) => r.name || regionName(r.key.qym),
    linkOf: (r, year) => route(["drill", "regions", r.key.qym], { year }),
  });
}

export async function departments(ctx) {
  const [qym] = ctx.params;
  const rn = regionName(qym);
  await level(ctx, {
    parts: ["drill", "regions", qym], title: `${rn}：部门`, keyLabel: "部门",
    endpoint: `/api/v1/drill/regions/${ENC(qym)}/departments`,
    crumbs: (year) => [...home(year), ["区县", route(["drill", "regions"], { year })], [rn]],
    nameOf: (r) => r.name || r.key.deptCode,
    linkOf: (r, year) => route(["drill", "regions", qym, "departments", r.key.deptCode],
      { year, dn: r.name }),
  });
}

export async function deptItems(ctx) {
  const [qym, dept] = ctx.params;
  const rn = regionName(qym);
  const dn = ctx.query.dn || dept;
  await level(ctx, {
    parts: ["drill", "regions", qym, "departments", dept], title: `${dn}：事项`,
    keyLabel: "事项", keep: { dn: ctx.query.dn },
    endpoint: `/api/v1/drill/regions/${ENC(qym)}/departments/${ENC(dept)}/items`,
    crumbs: (year) => [...home(year), ["区县", route(["drill", "regions"], { year })],
      [rn, route(["drill", "regions", qym], { year })], [dn]],
    nameOf: (r) => r.name || r.key.taskId,
    linkOf: (r, year) => route(["drill", "items", r.key.taskId],
      { year, qym, deptCode: dept, dn: ctx.query.dn, tn: r.name }),
  });
}

export async function levels(ctx) {
  await level(ctx, {
    parts: ["drill", "levels"], title: "系统下钻：系统层级", keyLabel: "层级",
    endpoint: "/api/v1/drill/levels",
    crumbs: (year) => [...home(year), ["系统层级"]],
    nameOf: (r) => LEVELS[r.key.systemLevel] || r.key.systemLevel,
    linkOf: (r, year) => route(["drill", "levels", r.key.systemLevel], { year }),
  });
}

export async function systems(ctx) {
  const [lv] = ctx.params;
  await level(ctx, {
    parts: ["drill", "levels", lv], title: `${LEVELS[lv] || lv}：业务系统`, keyLabel: "业务系统",
    endpoint: `/api/v1/drill/levels/${ENC(lv)}/systems`,
    crumbs: (year) => [...home(year), ["系统层级", route(["drill", "levels"], { year })],
      [LEVELS[lv] || lv]],
    nameOf: (r) => r.name ? `${r.name}（${r.key.systemCode}）` : r.key.systemCode,
    linkOf: (r, year) => route(["drill", "systems", r.key.systemCode],
      { year, lv, sn: r.name }),
  });
}

export async function systemItems(ctx) {
  const [code] = ctx.params;
  const lv = ctx.query.lv;
  const sn = ctx.query.sn || code;
  await level(ctx, {
    parts: ["drill", "systems", code], title: `${sn}：事项`, keyLabel: "事项",
    keep: { lv, sn: ctx.query.sn },
    endpoint: `/api/v1/drill/systems/${ENC(code)}/items`,
    crumbs: (year) => [...home(year), ["系统层级", route(["drill", "levels"], { year })],
      ...(lv ? [[LEVELS[lv] || lv, route(["drill", "levels", lv], { year })]] : []), [sn]],
    nameOf: (r) => r.name || r.key.taskId,
    linkOf: (r, year) => route(["drill", "items", r.key.taskId],
      { year, systemCode: code, lv, sn: ctx.query.sn, tn: r.name }),
  });
}

const CASE_SORTS = [["completedAt", "办结时间"], ["firstReceivedAt", "首次接收"],
  ["status", "状态"], ["caseNo", "办件号"]];

export async function cases(ctx) {
  const { main, query, go } = ctx;
  const [taskId] = ctx.params;
  const year = await chosenYear(query);
  const sort = query.sort || "completedAt";
  const order = query.order || "desc";
  const pageNo = Math.max(1, Number(query.page) || 1);
  const status = query.status || "";
  const keep = { qym: query.qym, deptCode: query.deptCode, systemCode: query.systemCode,
    dn: query.dn, tn: query.tn, sn: query.sn, lv: query.lv };
  const here = (q) => route(["drill", "items", taskId],
    { ...keep, year, sort, order, status, page: pageNo, ...q });
  const res = await get(`/api/v1/drill/items/${ENC(taskId)}/cases`, {
    year: year || undefined, qym: query.qym, deptCode: query.deptCode,
    systemCode: query.systemCode, status: status || undefined, sort, order, pageNo,
    pageSize: PAGE_SIZE,
  });
  const tn = query.tn || taskId;
  let crumbs;
  if (query.systemCode) {
    crumbs = [...home(year), ["系统层级", route(["drill", "levels"], { year })],
      ...(query.lv ? [[LEVELS[query.lv] || query.lv, route(["drill", "levels", query.lv], { year })]] : []),
      [query.sn || query.systemCode, route(["drill", "systems", query.systemCode],
        { year, lv: query.lv, sn: query.sn })], [tn]];
  } else {
    crumbs = [...home(year), ["区县", route(["drill", "regions"], { year })],
      ...(query.qym ? [[regionName(query.qym), route(["drill", "regions", query.qym], { year })]] : []),
      ...(query.deptCode ? [[query.dn || query.deptCode, route(["drill", "regions", query.qym,
        "departments", query.deptCode], { year, dn: query.dn })]] : []), [tn]];
  }
  main.append(breadcrumbs(crumbs));
  const statusSel = h("select", { "aria-label": "状态", "data-testid": "status-filter",
    onchange: (e) => go(here({ status: e.target.value, page: 1 })) },
  h("option", { value: "" }, "全部状态"),
  Object.entries(STATUSES).map(([k, v]) => h("option", { value: k, selected: k === status }, v)));
  main.append(pageHeader(`${tn}：办件`, yearSelect(year, (y) => go(here({ year: y, page: 1 }))),
    h("label", { class: "field" }, "状态 ", statusSel)));

  const head = h("tr", {}, h("th", { class: "num" }, "序号"),
    ...CASE_SORTS.slice(3).map(([f, l]) => sortTh(l, f, sort, order, here)),
    h("th", {}, "事项"), h("th", {}, "部门"), h("th", {}, "区县"), h("th", {}, "业务系统"),
    ...CASE_SORTS.slice(0, 3).map(([f, l]) => sortTh(l, f, sort, order, here)),
    h("th", { class: "num" }, "档案数"));
  const back = here({});
  const body = h("tbody", {}, res.items.map((c, i) => h("tr", {},
    h("td", { class: "num" }, (pageNo - 1) * PAGE_SIZE + i + 1),
    h("td", { class: "mono" }, h("a", { href: route(["cases", c.caseNo], { back }),
      class: "case-link" }, c.caseNo)),
    h("td", {}, c.taskName, h("div", { class: "muted small" }, c.taskCode)),
    h("td", {}, c.deptName),
    h("td", {}, c.area || regionName(c.qym)),
    h("td", {}, c.systemName, h("span", { class: "muted small" }, `（${c.systemLevel}）`)),
    h("td", { class: "nowrap" }, when(c.completedAt)),
    h("td", { class: "nowrap" }, when(c.firstReceivedAt)),
    h("td", {}, statusBadge(c.status)),
    h("td", { class: "num" }, c.archiveCount))));
  if (!res.items.length) {
    body.appendChild(h("tr", {}, h("td", { colspan: 10, class: "muted center" }, "暂无办件")));
  }
  main.append(h("section", { class: "card" },
    h("table", { class: "table", "data-testid": "case-table" }, h("thead", {}, head), body),
    pager(res.total, pageNo, PAGE_SIZE, (p) => here({ page: p }))));
}

function sortTh(label, field, sort, order, here) {
  const active = sort === field;
  const next = active && order === "asc" ? "desc" : "asc";
  return h("th", { class: active ? "sorted" : "" }, h("a", {
    href: here({ sort: field, order: next, page: 1 }), "data-sort": field },
  label + (active ? (order === "asc" ? " ▲" : " ▼") : "")));
}
