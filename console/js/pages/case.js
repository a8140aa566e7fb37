// 办件详情: the chain trace (every event in time order) and the case's anomalies.

import { get } from "../api.js";
import { kv, pageHeader } from "../common.js";
import { CODES, EVENT_TYPES, classBadge, h, regionName, route, statusBadge, when } from "../util.js";

const ENC = encodeURIComponent;

// the fields worth showing on one line, per event type
const KEY_FIELDS = {
  "case.completed": ["taskCode", "deptName", "systemName", "completedAt"],
  "province.pushed": ["batchNo", "targetQym"],
  "archive.received": ["archiveNo", "receiverQym"],
  "archive.checked": ["archiveNo", "passed", "failedItems"],
  "archive.backedUp": ["archiveNo", "backupId"],
  "archive.distributed": ["archiveNo", "distributionNo", "targetQym", "status"],
};
const FIELD_NAMES = {
  taskCode: "事项编码", deptName: "部门", systemName: "系统", completedAt: "办结时间",
  batchNo: "交换批次号", targetQym: "目标区县", archiveNo: "档号", receiverQym: "接收区县",
  passed: "检测结果", failedItems: "未通过项", backupId: "备份号", distributionNo: "分发号",
  status: "分发状态",
};

function fieldValue(name, v) {
  if (name === "passed") return v ? "通过" : "未通过";
  if (name === "failedItems") return Array.isArray(v) && v.length ? v.join("、") : "无";
  if (name === "targetQym" || name === "receiverQym") return `${regionName(v)}（${v}）`;
  if (name === "completedAt") return when(v);
  if (name === "status") return { sent: "已发送", acked: "已确认", failed: "失败" }[v] || v;
  return v;
}

export async function caseTrace(ctx) {
  const { main, query } = ctx;
  const [caseNo] = ctx.params;
  const t = await get(`/api/v1/cases/${ENC(caseNo)}`);
  const back = query.back && query.back.startsWith("#/") ? query.back : null;
  main.append(h("nav", { class: "crumbs" },
    back ? h("a", { href: back }, "‹ 返回办件列表") : h("a", { href: route(["overview"]) }, "‹ 总览")));
  const c = t.case;
  main.append(pageHeader(`办件 ${caseNo}`, c ? statusBadge(c.status) : h("span", { class: "badge badge-bad" }, "无办结记录（有档无件）")));
  if (c) {
    main.append(h("section", { class: "card" }, h("h3", {}, "办件信息"), kv([
      ["事项", `${c.taskName}（${c.taskCode}）`], ["部门", `${c.deptName}（${c.deptCode}）`],
      ["区县", `${c.area || regionName(c.qym)}（${c.qym}）`],
      ["业务系统", `${c.systemName}（${c.systemCode}，${c.systemLevel}级）`],
      ["办结时间", when(c.completedAt)], ["首次接收", when(c.firstReceivedAt)],
      ["档案数", String(c.archiveCount)], ["年度", String(c.year)],
    ])));
  }

  const list = h("ol", { class: "timeline", "data-testid": "trace" });
  for (const e of t.events) {
    const p = e.payload || {};
    const fields = (KEY_FIELDS[e.type] || []).filter((f) => p[f] !== undefined);
    const tone = e.type === "archive.checked" && p.passed === false ? "bad"
      : e.type === "archive.distributed" && p.status === "failed" ? "bad" : "ok";
    list.appendChild(h("li", { class: `tl-item tl-${tone}`, dataset: { type: e.type } },
      h("div", { class: "tl-time" }, when(e.occurredAt)),
      h("div", { class: "tl-body" },
        h("div", { class: "tl-title" }, EVENT_TYPES[e.type] || e.type,
          h("span", { class: "muted small" }, ` ${e.type} · 来源 ${e.source}`)),
        h("div", { class: "tl-fields" }, fields.map((f) => h("span", { class: "tl-field" },
          `${FIELD_NAMES[f] || f}：`,
          f === "archiveNo" ? h("a", { href: route(["devtools"], { archiveNo: p[f] }),
            title: "查看四性检测历史" }, p[f]) : fieldValue(f, p[f])))),
        h("details", {}, h("summary", {}, "原始事件"),
          h("pre", { class: "json" }, JSON.stringify(p, null, 2))))));
  }
  if (!t.events.length) list.appendChild(h("li", { class: "muted" }, "暂无事件"));
  main.append(h("section", { class: "card" }, h("h3", {}, `链路追踪（${t.events.length} 个事件，按发生时间排序）`), list));

  const rows = t.anomalies.map((a) => h("tr", {},
    h("td", {}, classBadge(a.class)),
    h("td", {}, CODES[a.code] || a.code, h("div", { class: "muted small mono" }, a.code)),
    h("td", { class: "mono" }, a.archiveNo || "—"),
    h("td", { class: "nowrap" }, when(a.openedAt)),
    h("td", { class: "nowrap" }, a.resolvedAt ? when(a.resolvedAt) : h("span", { class: "badge badge-bad" }, "未解除")),
    h("td", { class: "small" }, a.detail || "")));
  main.append(h("section", { class: "card" }, h("h3", {}, `异常（${t.anomalies.length}）`),
    t.anomalies.length
      ? h("table", { class: "table", "data-testid": "case-anomalies" }, h("thead", {}, h("tr", {},
        h("th", {}, "类别"), h("th", {}, "异常"), h("th", {}, "档号"), h("th", {}, "发生"),
        h("th", {}, "解除"), h("th", {}, "说明"))), h("tbody", {}, rows))
      : h("p", { class: "muted", "data-testid": "case-anomalies" }, "该办件没有异常。")));
}
