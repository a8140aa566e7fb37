// Small helpers: DOM building (text is always set as text, never parsed as HTML),
// formatting, and the Chinese labels of the domain's codes.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled") el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// Hangzhou's regions after the 2021 redistricting; 330101 is the city level (市本级).
export const REGIONS = {
  "330101": "市本级", "330102": "上城区", "330105": "拱墅区", "330106": "西湖区",
  "330108": "滨江区", "330109": "萧山区", "330110": "余杭区", "330111": "富阳区",
  "330112": "临安区", "330113": "临平区", "330114": "钱塘区", "330122": "桐庐县",
  "330127": "淳安县", "330182": "建德市",
};

export function regionName(qym) {
  if (!qym) return "—";
  return REGIONS[qym] || qym;
}

export const ROLES = {
  sysadmin: "系统管理员", city: "市级档案管理", district: "区县档案管理",
  department: "部门", system: "第三方系统", auditor: "审计",
};

export const CLASSES = { "漏": "漏（缺失）", "错": "错（错误）", "重": "重（重复）", link: "链路" };

export const CODES = {
  MISSING_ARCHIVE: "应归未归", LATE_ARCHIVE: "超期归档", PUSH_NOT_RECEIVED: "下发未接收",
  NOT_CHECKED: "未四性检测", NOT_BACKED_UP: "未备份", NOT_DISTRIBUTED: "未分发",
  DISTRIBUTION_FAILED: "分发失败", CHECK_FAILED: "四性检测未通过",
  METADATA_MISMATCH: "元数据不一致", INVALID_ARCHIVE_NO: "档号不合规",
  ORPHAN_ARCHIVE: "有档无件", BACKUP_HASH_MISMATCH: "备份校验值不一致",
  DUPLICATE_ARCHIVE: "一件多档", DUPLICATE_RECEIPT: "重复接收",
  ARCHIVE_NO_CONFLICT: "档号冲突", RECEIVER_DOWN: "接收系统离线",
};

export const KINDS = { opened: "新发", updated: "更新", resolved: "已解除", withdrawn: "撤回",
  group_opened: "区域成组中断", group_resolved: "区域成组恢复" };

export const EVENT_TYPES = {
  "case.completed": "业务系统办结", "province.pushed": "省级平台下发",
  "archive.received": "档案馆归档接收", "archive.checked": "四性检测",
  "archive.backedUp": "备份中心备份", "archive.distributed": "分发至区县",
  "receiver.heartbeat": "接收系统心跳", "interface.error": "接口错误",
};

export const STATUSES = {
  PENDING: "待归档", MISSING: "应归未归", ARCHIVED_OK: "已归档（检测通过）",
  ARCHIVED_FAIL: "已归档（有错误）", ARCHIVED_UNCHECKED: "已归档（待检测）",
};

export const RECEIVER_STATES = {
  up: "正常", late: "迟滞", down: "离线", new: "未上报", paused: "已暂停",
  unregistered: "未登记",
};

export const LEVELS = { "国": "国家级系统", "省": "省级系统", "市": "市级系统" };

export function pct(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  return (x * 100).toFixed(digits) + "%";
}

export function num(x) {
  if (x === null || x === undefined) return "—";
  return Number(x).toLocaleString("zh-CN");
}

export function days(x) {
  if (x === null || x === undefined) return "—";
  return Number(x).toFixed(2);
}

const fmt = new Intl.DateTimeFormat("zh-CN", {
  timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});

// ISO instants (UTC) are shown in Asia/Shanghai, as every day and year in the domain is.
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = Object.fromEntries(fmt.formatToParts(d).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || "plain"}` }, text);
}

export function classBadge(cls) {
  const kind = { "漏": "warn", "错": "bad", "重": "info", link: "link" }[cls] || "plain";
  return badge(cls === "link" ? "链路" : cls, kind);
}

export function statusBadge(status) {
  const kind = {
    ARCHIVED_OK: "good", ARCHIVED_FAIL: "bad", MISSING: "bad", PENDING: "plain",
    ARCHIVED_UNCHECKED: "warn",
  }[status] || "plain";
  return badge(STATUSES[status] || status, kind);
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

// "#/a/b?x=1" pieces, percent-encoded as needed
export function route(parts, query) {
  const path = parts.map((p) => encodeURIComponent(p)).join("/");
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== null && v !== undefined && v !== "") q.set(k, v);
  }
  const qs = q.toString();
  return `#/${path}${qs ? "?" + qs : ""}`;
}
