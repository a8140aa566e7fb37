// The session (token in sessionStorage) and every call to the API, with the bearer token.

const KEY = "archwatch.session";

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export const session = {
  get() {
    try {
      const s = JSON.parse(sessionStorage.getItem(KEY) || "null");
      if (s && s.expiresAt && s.expiresAt * 1000 < Date.now()) {
        sessionStorage.removeItem(KEY);
        return null;
      }
      return s;
    } catch {
      return null;
    }
  },
  set(s) {
    sessionStorage.setItem(KEY, JSON.stringify(s));
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
  token() {
    const s = this.get();
    return s ? s.accessToken : null;
  },
};

// Called on a 401: the session is over (expired, disabled, restarted server).
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const token = session.token();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return headers;
}

function url(path, params) {
  const u = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.searchParams.append(k, x));
    else u.searchParams.set(k, v);
  }
  return u.pathname + u.search;
}

async function parse(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export async function request(method, path, { params, json, form, raw } = {}) {
  const headers = authHeaders({ Accept: "application/json" });
  let body;
  if (json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // multipart: the browser sets the boundary
  }
  let res;
  try {
    res = await fetch(url(path, params), { method, headers, body });
  } catch (e) {
    throw new ApiError(0, "network", `无法连接服务器：${e.message}`);
  }
  const data = await parse(res);
  if (raw) return { status: res.status, ok: res.ok, data };
  if (!res.ok) {
    const err = data && data.error ? data.error : {};
    if (res.status === 401 && path !== "/api/v1/auth/login") onUnauthorized();
    throw new ApiError(res.status, err.code || "http_error",
      err.message || `请求失败（HTTP ${res.status}）`, data);
  }
  return data;
}

export const get = (path, params) => request("GET", path, { params });
export const post = (path, json) => request("POST", path, { json });
export const put = (path, json) => request("PUT", path, { json });
export const del = (path) => request("DELETE", path);

// Messages of the API's errors (English, for developers) with a Chinese lead.
export function describe(err) {
  if (!(err instanceof ApiError)) return `出错了：${err && err.message ? err.message : err}`;
  const lead = {
    0: "网络错误", 400: "请求参数有误", 401: "未登录或会话已过期", 403: "无权访问",
    404: "未找到", 413: "上传内容过大", 429: "请求过于频繁，请稍后再试",
    503: "服务暂不可用",
  }[err.status] || `服务器错误（HTTP ${err.status}）`;
  return `${lead}：${err.message}`;
}

export async function login(username, password) {
  const s = await request("POST", "/api/v1/auth/login", { json: { username, password } });
  session.set({ accessToken: s.accessToken, expiresAt: s.expiresAt, role: s.role, username });
  const me = await get("/api/v1/auth/me");
  session.set({ ...session.get(), me });
  return me;
}
