// 总览: archive rate, mean cycle and error rate by year and by region (ECharts), the
// region ranking (worst archive rate first), anomalies by class and by month.

import { get } from "../api.js";
import { chart, echartsReady, missingNotice } from "../charts.js";
import { chosenYear, kpiTable, pageHeader, yearSelect } from "../common.js";
import { CLASSES, days, h, num, pct, regionName, route } from "../util.js";

const SORTABLE = {
  key: (r) => r.key.qym, kpi: (r) => r.kpi, archived: (r) => r.archived,
  unArchived: (r) => r.unArchived, archiveRate: (r) => r.archiveRate,
  timeDiff: (r) => r.timeDiff, archivedFail: (r) => r.archivedFail,
  errorRate: (r) => r.errorRate,
};

function monthRanges(year) {
  const out = [];
  for (let m = 1; m <= 12; m += 1) {
    const pad = (x) => String(x).padStart(2, "0");
    const next = m === 12 ? `${Number(year) + 1}-01` : `${year}-${pad(m + 1)}`;
    out.push({ label: `${m}月`, from: `${year}-${pad(m)}-01T00:00:00+08:00`,
      to: `${next}-01T00:00:00+08:00` });
  }
  return out;
}

export async function overview(ctx) {
  const { main, query, go } = ctx;
  const year = await chosenYear(query);
  const sort = query.sort || "archiveRate";
  const order = query.order || "asc";
  const yearParam = year || undefined;
  const [byYear, byRegion, summary] = await Promise.all([
    get("/api/v1/stats", { groupBy: "year", pageSize: 200 }),
    get("/api/v1/stats", { groupBy: "qym", year: yearParam, pageSize: 200 }),
    get("/api/v1/anomalies/summary"),
  ]);

  const total = byYear.items.filter((r) => !year || r.key.year === year)
    .reduce((a, r) => {
      for (const f of ["kpi", "archived", "archivedFail", "unArchived"]) a[f] += r[f];
      a.cycle += r.timeDiff * r.archived;
      return a;
    }, { kpi: 0, archived: 0, archivedFail: 0, unArchived: 0, cycle: 0 });
  const rate = total.kpi ? total.archived / total.kpi : 0;
  const err = total.archived ? total.archivedFail / total.archived : 0;

  main.append(pageHeader(`归档总览${year ? `（${year} 年）` : "（全部年度）"}`,
    yearSelect(year, (y) => go(route(["overview"], { year: y, sort, order })))));
  if (!echartsReady()) main.append(missingNotice());

  main.append(h("div", { class: "cards", "data-testid": "kpi-cards" },
    card("应归档办件", num(total.kpi)),
    card("已归档", num(total.archived)),
    card("归档率", pct(rate), rate >= 0.95 ? "good" : rate >= 0.8 ? "warn" : "bad", "archive-rate"),
    card("平均归档周期", `${days(total.archived ? total.cycle / total.archived : 0)} 天`),
    card("归档错误率", pct(err), err > 0.05 ? "bad" : "good", "error-rate"),
    card("未归档", num(total.unArchived), total.unArchived ? "warn" : "good")));

  const years = byYear.items.map((r) => r.key.year);
  const regions = [...byRegion.items].sort((a, b) => a.key.qym.localeCompare(b.key.qym));
  const names = regions.map((r) => r.name || regionName(r.key.qym));
  const grid = { left: 50, right: 50, top: 40, bottom: 60 };
  const rateAxis = { type: "value", name: "比率", min: 0, max: 100,
    axisLabel: { formatter: "{value}%" } };

  main.append(h("div", { class: "grid2" },
    chart("各年度归档率与错误率", {
      tooltip: { trigger: "axis" }, legend: { top: 0 }, grid,
      xAxis: { type: "category", data: years.map((y) => `${y}年`) },
      yAxis: [rateAxis, { type: "value", name: "应归档", splitLine: { show: false } }],
      series: [
        { name: "归档率", type: "bar", data: byYear.items.map((r) => +(r.archiveRate * 100).toFixed(2)) },
        { name: "归档错误率", type: "bar", data: byYear.items.map((r) => +(r.errorRate * 100).toFixed(2)) },
        { name: "应归档办件", type: "line", yAxisIndex: 1, data: byYear.items.map((r) => r.kpi) },
      ],
    }, { testid: "chart-years" }),
    chart("各年度平均归档周期（天）", {
      tooltip: { trigger: "axis" }, grid,
      xAxis: { type: "category", data: years.map((y) => `${y}年`) },
      yAxis: { type: "value", name: "天" },
      series: [{ name: "归档周期", type: "bar", data: byYear.items.map((r) => r.timeDiff),
        label: { show: true, position: "top" } }],
    }, { testid: "chart-cycle-years" })));

  main.append(chart(`各区县归档率与错误率${year ? `（${year} 年）` : ""}`, {
    tooltip: { trigger: "axis" }, legend: { top: 0 }, grid: { ...grid, bottom: 70 },
    xAxis: { type: "category", data: names, axisLabel: { rotate: 30 } },
    yAxis: [rateAxis, { type: "value", name: "周期（天）", splitLine: { show: false } }],
    series: [
      { name: "归档率", type: "bar", data: regions.map((r) => +(r.archiveRate * 100).toFixed(2)) },
      { name: "归档错误率", type: "bar", data: regions.map((r) => +(r.errorRate * 100).toFixed(2)) },
      { name: "平均归档周期（天）", type: "line", yAxisIndex: 1, data: regions.map((r) => r.timeDiff) },
    ],
  }, { height: 340, testid: "chart-regions" }));

  // ranking: sorted here (all regions are on one page), worst archive rate first by default
  const key = SORTABLE[sort] || SORTABLE.archiveRate;
  const ranked = [...byRegion.items].sort((a, b) => {
    const x = key(a);
    const y = key(b);
    const c = x < y ? -1 : x > y ? 1 : 0;
    return order === "desc" ? -c : c;
  });
  main.append(h("section", { class: "card" },
    h("h3", {}, "区县排名", h("span", { class: "muted small" }, "（点击表头排序，点击名称下钻到部门）")),
    kpiTable({
      items: ranked, keyLabel: "区县", sort, order, testid: "region-ranking",
      nameOf: (r) => r.name || regionName(r.key.qym),
      linkOf: (r) => route(["drill", "regions", r.key.qym], { year }),
      hrefOf: (field, next) => route(["overview"], { year, sort: field, order: next }),
    })));

  // anomalies: by class, and opened per month of the chosen year
  const classes = ["漏", "错", "重", "link"];
  const byClass = summary.byClass || {};
  const charts = [chart("异常按类别（全部 / 未解除）", {
    tooltip: { trigger: "axis" }, legend: { top: 0 }, grid,
    xAxis: { type: "category", data: classes.map((c) => CLASSES[c]) },
    yAxis: { type: "value", name: "条" },
    series: [
      { name: "全部", type: "bar", data: classes.map((c) => (byClass[c] || {}).total || 0) },
      { name: "未解除", type: "bar", data: classes.map((c) => (byClass[c] || {}).open || 0) },
    ],
  }, { testid: "chart-classes" })];
  if (year) {
    const months = monthRanges(year);
    const perMonth = await Promise.all(months.map((m) => get("/api/v1/anomalies/summary",
      { openedFrom: m.from, openedTo: m.to })));
    charts.push(chart(`${year} 年各月新发异常（按类别）`, {
      tooltip: { trigger: "axis" }, legend: { top: 0 }, grid,
      xAxis: { type: "category", data: months.map((m) => m.label) },
      yAxis: { type: "value", name: "条" },
      series: classes.map((c) => ({ name: CLASSES[c], type: "bar", stack: "all",
        data: perMonth.map((s) => ((s.byClass || {})[c] || {}).total || 0) })),
    }, { testid: "chart-months" }));
  } else {
    charts.push(h("section", { class: "card" }, h("h3", {}, "按月趋势"),
      h("p", { class: "muted" }, "选择一个年度后显示该年各月新发异常。")));
  }
  main.append(h("div", { class: "grid2" }, ...charts));
  main.append(h("p", { class: "muted small" },
    "说明：归档率、归档周期与错误率按办结年度统计（接口 /api/v1/stats 无月份维度），",
    "按月趋势展示各月新发异常数（/api/v1/anomalies/summary 的 openedFrom/openedTo）。"));
}

function card(label, value, tone, testid) {
  return h("div", { class: `kpi-card ${tone ? "tone-" + tone : ""}`, "data-testid": testid },
    h("div", { class: "kpi-label" }, label), h("div", { class: "kpi-value" }, value));
}
