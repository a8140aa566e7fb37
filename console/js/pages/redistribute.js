// 重新分发: upload an Excel file (档号, 分发号) to /gdtjapi/batchResetPushStatus; the
// seed-style answer {code, message, data} is shown as returned.

import { request } from "../api.js";
import { pageHeader } from "../common.js";
import { clear, h } from "../util.js";

const ENDPOINT = "/gdtjapi/batchResetPushStatus";

export async function redistribute(ctx) {
  const { main } = ctx;
  const out = h("div", { "data-testid": "reset-result", "aria-live": "polite" });
  const file = h("input", { type: "file", name: "file", accept: ".xlsx,.xls", required: true,
    "data-testid": "reset-file" });
  const submit = h("button", { class: "btn btn-primary", type: "submit" }, "上传并重置推送状态");
  const form = h("form", { class: "card form", "data-testid": "reset-form", onsubmit: async (e) => {
    e.preventDefault();
    clear(out);
    if (!file.files.length) {
      out.append(h("div", { class: "alert alert-warn" }, "请选择一个 Excel 文件（.xlsx 或 .xls）。"));
      return;
    }
    const fd = new FormData();
    fd.append("file", file.files[0]);
    submit.disabled = true;
    out.append(h("p", { class: "muted" }, "正在上传…"));
    try {
      const res = await request("POST", ENDPOINT, { form: fd, raw: true });
      clear(out);
      out.append(show(res));
    } catch (err) {
      clear(out);
      out.append(h("div", { class: "alert alert-bad" }, `上传失败：${err.message}`));
    } finally {
      submit.disabled = false;
    }
  } },
  h("p", {}, "上传包含 ", h("b", {}, "档号"), " 与 ", h("b", {}, "分发号"),
    " 两列的 Excel 文件（列顺序不限，表头位于前几行），对应的分发记录将被重置为待推送，",
    "由分发程序在下一轮重新推送到区县接收系统。区县账号只能重置本区县的分发。"),
  h("label", { class: "field" }, "文件 ", file), " ", submit);
  main.append(pageHeader("重新分发（批量重置推送状态）"), form, out);
  main.append(h("p", { class: "muted small" }, `接口：POST ${ENDPOINT}（multipart/form-data，字段 file）。`,
    "应答为种子系统格式 {code, message, data}，data 为未匹配到分发记录的档号列表（全部匹配时为 null）。"));
}

function show(res) {
  const box = h("section", { class: "card" });
  if (res.status === 404) {
    box.append(h("div", { class: "alert alert-warn", "data-testid": "reset-404" },
      `接口 ${ENDPOINT} 尚未部署（HTTP 404）。该接口由另一项工作开发，部署后即可在此使用；`,
      "请联系系统管理员。"));
  } else if (res.ok && res.data && typeof res.data === "object" && "code" in res.data) {
    const d = res.data;
    const ok = d.code === 200;
    box.append(h("div", { class: `alert ${ok ? "alert-good" : "alert-bad"}`, "data-testid": "reset-message" },
      `code ${d.code}：${d.message}`));
    if (Array.isArray(d.data) && d.data.length) {
      box.append(h("h3", {}, `未匹配的档号（${d.data.length}）`),
        h("ul", { class: "mono small" }, d.data.map((x) => h("li", {}, typeof x === "string" ? x : JSON.stringify(x)))));
    }
  } else {
    const err = res.data && res.data.error ? res.data.error : null;
    const lead = { 400: "文件有误", 401: "未登录", 403: "无权操作", 413: "文件过大" }[res.status]
      || `HTTP ${res.status}`;
    box.append(h("div", { class: "alert alert-bad", "data-testid": "reset-message" },
      `${lead}：${err ? err.message : "请求失败"}`));
  }
  box.append(h("h3", {}, "接口原始应答"),
    h("pre", { class: "json", "data-testid": "reset-raw" },
      `HTTP ${res.status}\n` + (typeof res.data === "string" ? res.data : JSON.stringify(res.data, null, 2))));
  return box;
}
