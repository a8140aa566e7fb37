// The console's shell: login, header (who, and the scope every answer is filtered by),
// navigation, and a hash router (#/overview, #/drill/..., #/cases/...).

import { describe, get, login, session, setUnauthorizedHandler } from "./api.js";
import { disposeAll } from "./charts.js";
import { errorBox } from "./common.js";
import { caseTrace } from "./pages/case.js";
import { devtools } from "./pages/devtools.js";
import { cases, departments, deptItems, levels, regions, systemItems, systems } from "./pages/drill.js";
import { interfaces } from "./pages/interfaces.js";
import { knowledgeEdit, knowledgeList, knowledgeView } from "./pages/knowledge.js";
import { alerts, receivers } from "./pages/live.js";
import { overview } from "./pages/overview.js";
import { redistribute } from "./pages/redistribute.js";
import { clear, h, regionName, ROLES } from "./util.js";

const READERS = ["city", "district", "department", "system", "auditor"];
const RESETTERS = ["sysadmin", "city", "district"];
const ALL = [...READERS, "sysadmin"];

const ROUTES = [
  ["overview", /^overview$/, overview, READERS, "总览"],
  ["regions", /^drill\/regions$/, regions, READERS, "区域下钻"],
  ["departments", /^drill\/regions\/([^/]+)$/, departments, READERS, "部门"],
  ["dept-items", /^drill\/regions\/([^/]+)\/departments\/([^/]+)$/, deptItems, READERS, "事项"],
  ["levels", /^drill\/levels$/, levels, READERS, "系统下钻"],
  ["systems", /^drill\/levels\/([^/]+)$/, systems, READERS, "业务系统"],
  ["system-items", /^drill\/systems\/([^/]+)$/, systemItems, READERS, "事项"],
  ["cases", /^drill\/items\/([^/]+)$/, cases, READERS, "办件"],
  ["case", /^cases\/([^/]+)$/, caseTrace, READERS, "办件详情"],
  ["alerts", /^alerts$/, alerts, READERS, "实时异常"],
  ["receivers", /^receivers$/, receivers, READERS, "接收系统心跳"],
  ["redistribute", /^redistribute$/, redistribute, RESETTERS, "重新分发"],
  ["knowledge-new", /^knowledge\/(new)$/, knowledgeEdit, ["sysadmin"], "新建文章"],
  ["knowledge-edit", /^knowledge\/([^/]+)\/edit$/, knowledgeEdit, ["sysadmin"], "编辑文章"],
  ["knowledge-view", /^knowledge\/([^/]+)$/, knowledgeView, ALL, "知识专栏"],
  ["knowledge", /^knowledge$/, knowledgeList, ALL, "知识专栏"],
  ["interfaces", /^interfaces$/, interfaces, ALL, "接口文档"],
  ["devtools", /^devtools$/, devtools, READERS, "开发辅助"],
];

const NAV = [
  ["#/overview", "总览", READERS, "overview"],
  ["#/drill/regions", "区域下钻", READERS, "regions"],
  ["#/drill/levels", "系统下钻", READERS, "levels"],
  ["#/alerts", "实时异常", READERS, "alerts"],
  ["#/receivers", "接收系统心跳", READERS, "receivers"],
  ["#/redistribute", "重新分发", RESETTERS, "redistribute"],
  ["#/knowledge", "知识专栏", ALL, "knowledge"],
  ["#/interfaces", "接口文档", ALL, "interfaces"],
  ["#/devtools", "开发辅助", READERS, "devtools"],
];

const root = document.getElementById("app");
let content = null;
let cleanup = null;
let renderSeq = 0;

function me() {
  return (session.get() || {}).me || null;
}

function scopeText(m) {
  if (!m) return "";
  if (m.qym) return `区县：${regionName(m.qym)}（${m.qym}）`;
  if (m.deptCode) return `部门：${m.deptCode}`;
  if (m.systemCode) return `系统：${m.systemCode}`;
  return m.role === "sysadmin" ? "系统管理（不含业务数据）" : "全市";
}

function defaultRoute(m) {
  return m && m.role === "sysadmin" ? "#/knowledge" : "#/overview";
}

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?", 2);
  const query = Object.fromEntries(new URLSearchParams(qs || ""));
  return { path: path.replace(/\/+$/, ""), query };
}

export function go(hash) {
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
}

function showLogin(message) {
  if (cleanup) cleanup();
  cleanup = null;
  disposeAll();
  content = null;
  document.title = "登录 - archwatch 归档监管控制台";
  const user = h("input", { name: "username", autocomplete: "username", required: true,
    "data-testid": "username" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password",
    required: true, "data-testid": "password" });
  const msg = h("div", { "aria-live": "polite" },
    message ? h("div", { class: "alert alert-warn" }, message) : null);
  const btn = h("button", { class: "btn btn-primary wide", type: "submit", "data-testid": "login" }, "登录");
  const form = h("form", { class: "login card", onsubmit: async (e) => {
    e.preventDefault();
    clear(msg);
    btn.disabled = true;
    try {
      const m = await login(user.value.trim(), pass.value);
      const target = window.location.hash && window.location.hash !== "#/login"
        ? window.location.hash : defaultRoute(m);
      shell();
      go(target);
    } catch (err) {
      msg.append(h("div", { class: "alert alert-bad", "data-testid": "login-error" },
        err.status === 401 ? "用户名或密码错误。" : describe(err)));
    } finally {
      btn.disabled = false;
    }
  } },
  h("h1", {}, "archwatch 归档监管控制台"),
  h("p", { class: "muted" }, "政务服务办件电子归档全链路监管"),
  h("label", { class: "field block" }, "用户名", user),
  h("label", { class: "field block" }, "密码", pass),
  btn, msg);
  clear(root).append(h("div", { class: "login-wrap", "data-page": "login" }, form));
  user.focus();
}

function shell() {
  const m = me();
  const role = m ? m.role : "";
  const nav = h("nav", { class: "side", "aria-label": "导航" },
    NAV.filter(([, , roles]) => roles.includes(role)).map(([href, label, , id]) =>
      h("a", { href, dataset: { nav: id } }, label)));
  const header = h("header", { class: "top" },
    h("a", { class: "brand", href: defaultRoute(m) }, "archwatch ", h("span", {}, "归档监管控制台")),
    h("div", { class: "who", "data-testid": "who" },
      h("span", { class: "user" }, m ? m.username : ""),
      h("span", { class: "role" }, ROLES[role] || role),
      h("span", { class: "scope", "data-testid": "scope" }, scopeText(m)),
      h("button", { class: "btn btn-small", "data-testid": "logout", onclick: () => {
        session.clear();
        window.location.hash = "#/login";
      } }, "退出")));
  content = h("main", { class: "content", id: "content" });
  clear(root).append(header, h("div", { class: "body" }, nav, content));
}

async function render() {
  const { path, query } = parseHash();
  const s = session.get();
  if (!s || path === "login") {
    showLogin(path === "login" ? null : undefined);
    return;
  }
  if (!s.me) {
    try {
      const m = await get("/api/v1/auth/me");
      session.set({ ...s, me: m });
    } catch {
      return;
    }
  }
  if (!content || !content.isConnected) shell();
  const m = me();
  if (!path) {
    go(defaultRoute(m));
    return;
  }
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // a page's cleanup must not stop the next page
    }
    cleanup = null;
  }
  disposeAll();
  const seq = ++renderSeq;
  // data-hash and data-ready tell which route a page shows and when it is complete
  const page = h("div", { class: "page", "aria-busy": "true",
    dataset: { hash: window.location.hash } });
  clear(content).append(page);
  const found = ROUTES.find(([, re]) => re.test(path));
  for (const a of document.querySelectorAll("nav.side a")) {
    a.classList.toggle("active", Boolean(found) && path.startsWith(a.getAttribute("href").slice(2).split("/").slice(0, 2).join("/")));
  }
  if (!found) {
    page.append(h("div", { class: "alert alert-warn" }, "页面不存在。"), h("a", { href: defaultRoute(m) }, "返回首页"));
    page.dataset.ready = "404";
    return;
  }
  const [name, re, handler, roles, title] = found;
  document.title = `${title} - archwatch 归档监管控制台`;
  if (!roles.includes(m.role)) {
    page.append(h("div", { class: "alert alert-warn", "data-testid": "forbidden" },
      `您的账号（${ROLES[m.role] || m.role}）无权查看“${title}”。`));
    page.dataset.ready = name;
    page.removeAttribute("aria-busy");
    return;
  }
  const params = path.match(re).slice(1).map((x) => decodeURIComponent(x));
  try {
    const done = await handler({ main: page, params, query, go });
    if (seq !== renderSeq) {
      if (typeof done === "function") done();
      return;
    }
    if (typeof done === "function") cleanup = done;
  } catch (err) {
    if (seq !== renderSeq) return;
    if (!session.get()) return; // 401: the login page is already shown
    page.append(errorBox(err));
  }
  page.removeAttribute("aria-busy");
  page.dataset.ready = name;
}

setUnauthorizedHandler(() => {
  session.clear();
  showLogin("会话已过期或已失效，请重新登录。");
});

window.addEventListener("hashchange", render);
render();
