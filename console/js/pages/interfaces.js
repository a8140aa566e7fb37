// 接口文档: the provincial and municipal archiving interfaces (event types and fields, from
// the contract), with links to the OpenAPI documentation.

import { pageHeader } from "../common.js";
import { h } from "../util.js";

let cached = null;

export async function interfaces(ctx) {
  const { main } = ctx;
  main.append(pageHeader("接口文档",
    h("a", { class: "btn", href: "/docs", target: "_blank", rel: "noopener" }, "OpenAPI 文档（/docs）"),
    h("a", { class: "btn", href: "#province" }, "省级接口"),
    h("a", { class: "btn", href: "#city" }, "市级接口")));
  if (cached === null) {
    const res = await fetch("content/interfaces.html", { cache: "no-cache" });
    if (!res.ok) throw new Error(`接口文档加载失败（HTTP ${res.status}）`);
    cached = await res.text();
  }
  const box = h("div", { class: "docs", "data-testid": "interfaces" });
  box.innerHTML = cached; // a static page of this console, not data
  // in-page anchors must not be taken for routes
  for (const a of box.querySelectorAll('a[href^="#"]')) a.removeAttribute("href");
  main.append(box);
  main.querySelectorAll('.page-head a[href^="#province"], .page-head a[href^="#city"]').forEach((a) => {
    const id = a.getAttribute("href").slice(1);
    a.addEventListener("click", (e) => {
      e.preventDefault();
      const el = document.getElementById(id);
      if (el) el.scrollIntoView({ behavior: "smooth" });
    });
  });
}
