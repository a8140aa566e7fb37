// 开发辅助: a business system's daily archive log (/api/v1/systems/{code}/daily-log) and
// an archive's four-property check history (/api/v1/archives/{archiveNo}/checks).

import { get } from "../api.js";
import { chart } from "../charts.js";
import { errorBox, pageHeader } from "../common.js";
import { badge, h, num, route, when } from "../util.js";

const ENC = encodeURIComponent;

export async function devtools(ctx) {
  const { main, query, go } = ctx;
  const systemCode = query.systemCode || "";
  const archiveNo = query.archiveNo || "";
  const from = query.from || "";
  const to = query.to || "";
  const here = (x) => route(["devtools"], { systemCode, archiveNo, from, to, ...x });

  // the systems the caller can see, for the picker
  let systems = [];
  try {
    const res = await get("/api/v1/stats", { groupBy: "systemCode", pageSize: 200 });
    systems = res.items.map((r) => ({ code: r.key.systemCode, name: r.name }));
  } catch {
    systems = [];
  }
  main.append(pageHeader("开发辅助"));

  // daily archive log
  const sysSel = h("select", { name: "systemCode", "data-testid": "log-system" },
    h("option", { value: "" }, "选择业务系统"),
    systems.map((s) => h("option", { value: s.code, selected: s.code === systemCode },
      s.name ? `${s.name}（${s.code}）` : s.code)));
  const fromIn = h("input", { type: "date", value: from, "aria-label": "起始日" });
  const toIn = h("input", { type: "date", value: to, "aria-label": "截止日" });
  const logCard = h("section", { class: "card", "data-testid": "daily-log" },
    h("h3", {}, "每日归档日志"),
    h("form", { class: "inline", onsubmit: (e) => { e.preventDefault();
      go(here({ systemCode: sysSel.value, from: fromIn.value, to: toIn.value })); } },
    sysSel, h("label", { class: "field" }, " 从 ", fromIn), h("label", { class: "field" }, " 到 ", toIn),
    h("button", { class: "btn", type: "submit" }, "查询")));
  main.append(logCard);
  if (systemCode) {
    try {
      const rows = await get(`/api/v1/systems/${ENC(systemCode)}/daily-log`,
        { from: from || undefined, to: to || undefined });
      if (rows.length) {
        logCard.append(chart(`${systemCode} 每日接收`, {
          tooltip: { trigger: "axis" }, legend: { top: 0 }, grid: { left: 50, right: 20, top: 40, bottom: 60 },
          xAxis: { type: "category", data: rows.map((r) => r.day) },
          yAxis: { type: "value", name: "件" },
          series: [
            { name: "检测通过", type: "bar", stack: "r", data: rows.map((r) => r.passed) },
            { name: "有错误", type: "bar", stack: "r", data: rows.map((r) => r.failed) },
            { name: "待检测", type: "bar", stack: "r", data: rows.map((r) => r.unchecked) },
          ],
        }, { height: 260 }));
      }
      logCard.append(h("table", { class: "table compact", "data-testid": "daily-log-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "日期"), h("th", { class: "num" }, "接收"),
          h("th", { class: "num" }, "检测通过"), h("th", { class: "num" }, "有错误"),
          h("th", { class: "num" }, "待检测"))),
        h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, h("td", {}, r.day),
          h("td", { class: "num" }, num(r.received)), h("td", { class: "num" }, num(r.passed)),
          h("td", { class: "num" }, num(r.failed)), h("td", { class: "num" }, num(r.unchecked))))
          : h("tr", {}, h("td", { colspan: 5, class: "muted center" }, "该时间段没有接收记录")))));
    } catch (e) {
      logCard.append(errorBox(e));
    }
  }

  // four-property check history
  const archIn = h("input", { name: "archiveNo", value: archiveNo, class: "wide mono",
    placeholder: "档号，例如 330102-08-00322-001-2022-D100-0000001", "data-testid": "check-archive" });
  const checkCard = h("section", { class: "card", "data-testid": "checks" },
    h("h3", {}, "四性检测历史"),
    h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); go(here({ archiveNo: archIn.value.trim() })); } },
      archIn, h("button", { class: "btn", type: "submit" }, "查询")));
  main.append(checkCard);
  if (archiveNo) {
    try {
      const checks = await get(`/api/v1/archives/${ENC(archiveNo)}/checks`);
      checkCard.append(h("table", { class: "table", "data-testid": "checks-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "检测时间"), h("th", {}, "结果"), h("th", {}, "未通过项"),
          h("th", {}, "涉及属性"), h("th", {}, "办件"), h("th", {}, "事件"))),
        h("tbody", {}, checks.length ? checks.map((c) => h("tr", {},
          h("td", { class: "nowrap" }, when(c.occurredAt)),
          h("td", {}, c.passed ? badge("通过", "good") : badge("未通过", "bad")),
          h("td", { class: "mono" }, c.failedItems.join("、") || "—"),
          h("td", {}, c.failedProperties.join("、") || "—"),
          h("td", {}, h("a", { href: route(["cases", c.caseNo]), class: "mono" }, c.caseNo)),
          h("td", { class: "mono small" }, c.eventId)))
          : h("tr", {}, h("td", { colspan: 6, class: "muted center" }, "没有该档号的检测记录（或不在您的范围内）")))));
    } catch (e) {
      checkCard.append(errorBox(e));
    }
  }
  main.append(h("p", { class: "muted small" }, "四性检测项编码 GD-c-n：c=1 真实性，2 完整性，3 可用性，4 安全性（DA/T 70）。"));
}
