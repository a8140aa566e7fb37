// ECharts, served from console/node_modules by the API at /console/vendor/echarts.min.js.

import { h } from "./util.js";

const live = new Set();

export const COLORS = ["#1f6feb", "#d4380d", "#389e0d", "#d48806", "#722ed1", "#08979c"];

export function echartsReady() {
  return typeof window.echarts !== "undefined";
}

export function missingNotice() {
  return h("div", { class: "alert alert-warn", "data-testid": "echarts-missing" },
    "图表组件 ECharts 未安装（/console/vendor/echarts.min.js 不可用）：请在服务器上运行 ",
    h("code", {}, "scripts/console-setup.sh"), "（在 console/ 目录执行 npm ci）。表格数据不受影响。");
}

// A chart card: a title and a box; returns the card. `option` is an ECharts option.
export function chart(title, option, { height = 300, testid } = {}) {
  const box = h("div", { class: "chart", style: `height:${height}px` });
  const card = h("section", { class: "card chart-card", "data-testid": testid },
    h("h3", {}, title), box);
  if (!echartsReady()) {
    box.appendChild(h("p", { class: "muted" }, "（图表组件未安装）"));
    return card;
  }
  // initialise once the card is in the document (pages add it after their last await),
  // so it has a size; a card that never gets there is given up after ~10 s
  let frames = 0;
  const init = () => {
    if (!box.isConnected) {
      if ((frames += 1) < 600) requestAnimationFrame(init);
      return;
    }
    const inst = window.echarts.init(box, null, { renderer: "canvas" });
    inst.setOption({ color: COLORS, animation: false, textStyle: { fontFamily:
      '"WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", sans-serif' }, ...option });
    live.add(inst);
    box.dataset.rendered = "true";
  };
  requestAnimationFrame(init);
  return card;
}

export function disposeAll() {
  for (const c of live) c.dispose();
  live.clear();
}

window.addEventListener("resize", () => {
  for (const c of live) c.resize();
});
