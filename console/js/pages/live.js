// 实时异常: the live anomaly feed (SSE read with fetch, resumed with Last-Event-ID) with
// filters by class and region, and the latest anomalies; 接收系统心跳: the receivers'
// heartbeat board with state, last beat and uptime per day.

import { get, session } from "../api.js";
import { errorBox, pageHeader } from "../common.js";
import { EventStream } from "../sse.js";
import {
  CLASSES, CODES, KINDS, RECEIVER_STATES, REGIONS, badge, classBadge, h, clear, num, pct,
  regionName, route, when,
} from "../util.js";

const MAX_ROWS = 200;

function regionSelect(me, current, onChange) {
  const fixed = me && me.qym;
  const sel = h("select", { "aria-label": "区县", "data-testid": "feed-region", disabled: Boolean(fixed),
    onchange: (e) => onChange(e.target.value) },
  fixed ? null : h("option", { value: "" }, "全部区县"),
  Object.entries(REGIONS).filter(([k]) => !fixed || k === fixed)
    .map(([k, v]) => h("option", { value: k, selected: k === (fixed || current) }, `${v}（${k}）`)));
  return h("label", { class: "field" }, "区县 ", sel);
}

function classSelect(current, onChange) {
  const sel = h("select", { "aria-label": "类别", "data-testid": "feed-class",
    onchange: (e) => onChange(e.target.value) },
  h("option", { value: "" }, "全部类别"),
  Object.entries(CLASSES).map(([k, v]) => h("option", { value: k, selected: k === current }, v)));
  return h("label", { class: "field" }, "类别 ", sel);
}

function feedRow(ev) {
  const d = ev.data;
  const subject = d.caseNo
    ? h("a", { href: route(["cases", d.caseNo]), class: "mono" }, d.caseNo)
    : d.receiverId ? h("span", { class: "mono" }, `接收系统 ${d.receiverId}`)
    : d.groupId ? h("span", {}, `${(d.receivers || []).length} 个接收系统`) : "—";
  const kindTone = { opened: "bad", updated: "warn", resolved: "good", withdrawn: "plain",
    group_opened: "bad", group_resolved: "good" }[ev.type];
  return h("tr", { class: "fresh", dataset: { seq: ev.id, kind: ev.type, case: d.caseNo || "" } },
    h("td", { class: "nowrap" }, when(new Date().toISOString())),
    h("td", {}, badge(KINDS[ev.type] || ev.type, kindTone)),
    h("td", {}, classBadge(d.class)),
    h("td", {}, CODES[d.code] || d.code, h("div", { class: "muted small mono" }, d.code)),
    h("td", {}, subject),
    h("td", {}, regionName(d.qym)),
    h("td", { class: "nowrap" }, when(d.openedAt)),
    h("td", { class: "small" }, d.detail || ""));
}

export async function alerts(ctx) {
  const { main, query } = ctx;
  const me = (session.get() || {}).me || {};
  const filters = { cls: query.class || "", qym: me.qym || query.qym || "" };
  const state = h("span", { class: "conn", "data-testid": "feed-state", dataset: { state: "connecting" } }, "连接中…");
  const counter = h("span", { class: "muted small", "data-testid": "feed-count" }, "本页已收到 0 条");
  const tbody = h("tbody", { "data-testid": "feed" });
  const empty = h("tr", { class: "empty" }, h("td", { colspan: 8, class: "muted center" },
    "等待新的异常…（页面打开后发生的新发、更新、解除与撤回会实时出现在这里）"));
  tbody.appendChild(empty);
  const recent = h("div", {});
  let received = 0;
  let stream = null;

  const setState = (s, wait) => {
    state.dataset.state = s;
    state.textContent = {
      connecting: "连接中…", open: "● 已连接（实时）", closed: "已断开",
      reconnecting: `连接中断，${Math.round((wait || 0) / 1000)} 秒后重连（从 ${stream && stream.lastEventId !== null ? "#" + stream.lastEventId : "当前"} 续传）`,
      denied: "无权订阅实时异常",
    }[s] || s;
  };

  const start = (lastEventId) => {
    const params = new URLSearchParams();
    if (filters.cls) params.set("class", filters.cls);
    if (filters.qym) params.set("qym", filters.qym);
    stream = new EventStream(`/api/v1/alerts/stream${params.toString() ? "?" + params : ""}`, {
      lastEventId,
      onState: setState,
      onEvent: (ev) => {
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (empty.isConnected) empty.remove();
        tbody.insertBefore(feedRow({ ...ev, data }), tbody.firstChild);
        while (tbody.children.length > MAX_ROWS) tbody.removeChild(tbody.lastChild);
        received += 1;
        counter.textContent = `本页已收到 ${received} 条，最新 #${ev.id}`;
      },
    }).start();
  };

  const loadRecent = async () => {
    clear(recent);
    try {
      const res = await get("/api/v1/anomalies", { class: filters.cls || undefined,
        qym: filters.qym || undefined, pageSize: 20 });
      recent.append(h("table", { class: "table", "data-testid": "recent-anomalies" },
        h("thead", {}, h("tr", {}, h("th", {}, "类别"), h("th", {}, "异常"), h("th", {}, "办件 / 接收系统"),
          h("th", {}, "区县"), h("th", {}, "发生"), h("th", {}, "解除"))),
        h("tbody", {}, res.items.map((a) => h("tr", {},
          h("td", {}, classBadge(a.class)),
          h("td", {}, CODES[a.code] || a.code),
          h("td", {}, a.caseNo ? h("a", { href: route(["cases", a.caseNo]), class: "mono" }, a.caseNo)
            : h("span", { class: "mono" }, a.receiverId || "—")),
          h("td", {}, regionName(a.qym)),
          h("td", { class: "nowrap" }, when(a.openedAt)),
          h("td", { class: "nowrap" }, a.resolvedAt ? when(a.resolvedAt) : badge("未解除", "bad")))))),
      h("p", { class: "muted small" }, `符合条件的异常共 ${num(res.total)} 条`));
    } catch (e) {
      recent.append(errorBox(e));
    }
  };

  const restart = () => {
    const last = stream ? stream.lastEventId : null;
    if (stream) stream.stop();
    history.replaceState(null, "", route(["alerts"], { class: filters.cls, qym: me.qym ? "" : filters.qym }));
    start(last);
    loadRecent();
  };

  main.append(pageHeader("实时异常", classSelect(filters.cls, (v) => { filters.cls = v; restart(); }),
    regionSelect(me, filters.qym, (v) => { filters.qym = v; restart(); }), state, counter));
  main.append(h("section", { class: "card" }, h("h3", {}, "实时推送（/api/v1/alerts/stream）"),
    h("table", { class: "table" }, h("thead", {}, h("tr", {}, h("th", {}, "收到"), h("th", {}, "变化"),
      h("th", {}, "类别"), h("th", {}, "异常"), h("th", {}, "办件 / 接收系统"), h("th", {}, "区县"),
      h("th", {}, "发生"), h("th", {}, "说明"))), tbody)));
  main.append(h("section", { class: "card" }, h("h3", {}, "最近的异常"), recent));
  start(null);
  await loadRecent();
  return () => stream && stream.stop();
}

function isoDay(d) {
  const p = new Intl.DateTimeFormat("en-CA", { timeZone: "Asia/Shanghai", year: "numeric",
    month: "2-digit", day: "2-digit" }).format(d);
  return p; // YYYY-MM-DD
}

export async function receivers(ctx) {
  const { main, query, go } = ctx;
  const to = query.to || isoDay(new Date());
  const from = query.from || isoDay(new Date(Date.parse(to + "T12:00:00+08:00") - 6 * 86400000));
  const board = h("div", {});
  const stamp = h("span", { class: "muted small", "data-testid": "board-stamp" });
  const fromIn = h("input", { type: "date", value: from, "aria-label": "起始日" });
  const toIn = h("input", { type: "date", value: to, "aria-label": "截止日" });
  main.append(pageHeader("接收系统心跳",
    h("label", { class: "field" }, "可用率 从 ", fromIn),
    h("label", { class: "field" }, "到 ", toIn),
    h("button", { class: "btn", onclick: () => go(route(["receivers"], { from: fromIn.value, to: toIn.value })) }, "查询"),
    stamp));
  main.append(board);

  const render = async () => {
    const list = await get("/api/v1/receivers");
    const uptimes = await Promise.all(list.map((r) => r.registered
      ? get(`/api/v1/receivers/${encodeURIComponent(r.receiverId)}/uptime`, { from, to })
        .catch(() => null)
      : Promise.resolve(null)));
    clear(board);
    const counts = {};
    for (const r of list) counts[r.state] = (counts[r.state] || 0) + 1;
    board.append(h("div", { class: "cards" }, Object.entries(RECEIVER_STATES).map(([k, v]) =>
      h("div", { class: `kpi-card tone-${stateTone(k)}` }, h("div", { class: "kpi-label" }, v),
        h("div", { class: "kpi-value" }, String(counts[k] || 0))))));
    const rows = list.map((r, i) => {
      const u = uptimes[i];
      const daysList = u ? u.days : [];
      const avail = daysList.filter((d) => d.availability !== null);
      const mean = avail.length ? avail.reduce((a, d) => a + d.availability, 0) / avail.length : null;
      return h("tr", { dataset: { receiver: r.receiverId, state: r.state } },
        h("td", { class: "mono" }, r.receiverId),
        h("td", { class: "nowrap" }, `${regionName(r.qym)}（${r.qym || "—"}）`),
        h("td", {}, badge(RECEIVER_STATES[r.state] || r.state, stateTone(r.state))),
        h("td", { class: "nowrap" }, when(r.lastBeatAt)),
        h("td", { class: "num" }, num(r.beats)),
        h("td", { class: "nowrap", title: r.alertAfter ? `若无心跳，${when(r.alertAfter)} 告警` : null },
          r.schedule ? `${r.schedule}（${r.tz}）/ ${r.grace / 1000} 秒`
            : r.period ? `${r.period / 1000} 秒 / ${r.grace / 1000} 秒` : "—",
          r.inMaintenance ? [" ", badge("维护中", "warn")] : null),
        h("td", { class: "num" }, mean === null ? "—" : pct(mean, 2)),
        h("td", {}, h("div", { class: "uptime" }, daysList.map((d) => h("span", {
          class: `up-day up-${d.availability === null ? "none" : d.availability >= 0.999 ? "good" : d.availability >= 0.95 ? "warn" : "bad"}`,
          title: `${d.day}：${d.availability === null ? "无数据" : pct(d.availability, 2)}` })))),
        h("td", { class: "num" }, u ? `${u.down.length}${u.down.some((x) => x.open) ? "（进行中）" : ""}` : "—"),
        h("td", {}, r.owner || "—"));
    });
    board.append(h("section", { class: "card" }, h("table", { class: "table", "data-testid": "receivers" },
      h("thead", {}, h("tr", {}, h("th", {}, "接收系统"), h("th", {}, "区县"), h("th", {}, "状态"),
        h("th", {}, "最近心跳"), h("th", {}, "心跳次数"), h("th", {}, "周期或计划 / 宽限"),
        h("th", {}, `可用率（${from} 至 ${to}）`), h("th", {}, "每日"), h("th", {}, "离线次数"),
        h("th", {}, "负责人"))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 10, class: "muted center" }, "暂无接收系统"))))));
    stamp.textContent = `更新于 ${when(new Date().toISOString())}，每 30 秒刷新`;
  };
  await render();
  const timer = setInterval(() => render().catch(() => {}), 30000);
  return () => clearInterval(timer);
}

function stateTone(s) {
  return { up: "good", late: "warn", down: "bad", new: "plain", paused: "plain", unregistered: "info" }[s] || "plain";
}
