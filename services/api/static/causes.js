// Why NG? The root-cause ranking (POST /v1/analytics/causes) as a chart of rate ratios with their
// 95% intervals, the strongest parameter's NG rate per bin (POST /v1/analytics/query) and a table.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 900;
  const ROW = 30;
  const LEFT = 200;
  const RIGHT = 60;

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function request() {
    const filters = {};
    const period = document.getElementById("period").value;
    if (period) filters.captured_from = new Date(Date.now() - Number(period) * 1000).toISOString();
    const line = document.getElementById("line").value.trim();
    if (line) filters.line_id = line;
    const outcome = document.getElementById("outcome").value;
    const body = { filters };
    if (outcome) {
      const [field, value] = outcome.split("=");
      body.outcome = { [field]: value };
    }
    return body;
  }

  // Rate ratios on a log scale from 1 to the largest interval end; a bar per parameter.
  function ratioChart(causes) {
    const box = document.getElementById("causes-chart");
    if (!causes.length) {
      box.replaceChildren(lw.el("p", { class: "empty" }, "No parameter separates them."));
      return;
    }
    const height = causes.length * ROW + 30;
    const top = Math.max(2, ...causes.map((c) => c.rate_ratio_ci95[1]), ...causes.map((c) => c.rate_ratio));
    const x = (ratio) => LEFT + (Math.log(Math.max(ratio, 1)) / Math.log(top)) * (WIDTH - LEFT - RIGHT);
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "rate ratios" });
    for (const tick of [1, 1.5, 2, 3, 5, 10, 20].filter((t) => t <= top)) {
      chart.append(svg("line", { class: "axis", x1: x(tick), x2: x(tick), y1: 0, y2: height - 20 }));
      chart.append(svg("text", { x: x(tick), y: height - 6, "text-anchor": "middle" }, `${tick}×`));
    }
    causes.forEach((cause, i) => {
      const y = i * ROW + 6;
      const side = cause.range.side === "<" ? "<" : "≥";
      chart.append(svg("text", { x: LEFT - 8, y: y + 14, "text-anchor": "end" },
        `${lw.paramLabel(cause.param)} ${side} ${cause.range.threshold}`));
      const bar = svg("rect", {
        class: `bar ${cause.status}`, x: x(1), y, width: Math.max(1, x(cause.rate_ratio) - x(1)), height: ROW - 10,
      });
      bar.append(svg("title", {}, cause.sentence));
      chart.append(bar);
      const [low, high] = cause.rate_ratio_ci95;
      const mid = y + (ROW - 10) / 2;
      chart.append(svg("line", { class: "whisker", x1: x(low), x2: x(high), y1: mid, y2: mid }));
      chart.append(svg("text", { x: x(high) + 6, y: y + 14 }, `${cause.rate_ratio.toFixed(1)}×`));
    });
    box.replaceChildren(chart);
  }

  // The NG rate in each bin of the strongest parameter (the bins the ranking used), frames as labels.
  async function binsChart(body, cause) {
    const box = document.getElementById("bins-chart");
    document.getElementById("bins-param").textContent = cause ? lw.paramLabel(cause.param) : "";
    if (!cause || cause.levels.length < 1) {
      box.replaceChildren();
      return;
    }
    const field = `param:${cause.param}`;
    const result = await lw.postJson("/v1/analytics/query", {
      filters: body.filters, group_by: [{ field, edges: cause.levels }], measures: ["frames", "ng_rate"],
    });
    const rows = result.rows;
    const height = 220;
    const slot = (WIDTH - 60) / Math.max(1, rows.length);
    const most = Math.max(0.05, ...rows.map((r) => r.ng_rate || 0));
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "NG rate by bin" });
    rows.forEach((row, i) => {
      const bin = row[field];
      const barHeight = ((row.ng_rate || 0) / most) * (height - 60);
      const x = 40 + i * slot;
      const rect = svg("rect", { class: "bin", x: x + 4, y: height - 40 - barHeight, width: slot - 8, height: barHeight });
      const name = bin.from === null ? `< ${bin.to}` : bin.to === null ? `≥ ${bin.from}` : `${bin.from}–${bin.to}`;
      rect.append(svg("title", {}, `${name}: ${lw.formatPercent(row.ng_rate || 0)} NG of ${row.frames} frames`));
      chart.append(rect);
      chart.append(svg("text", { x: x + slot / 2, y: height - 24, "text-anchor": "middle" }, name));
      chart.append(svg("text", { x: x + slot / 2, y: height - 8, "text-anchor": "middle" }, `n ${row.frames}`));
      chart.append(svg("text", { x: x + slot / 2, y: height - 44 - barHeight, "text-anchor": "middle" },
        lw.formatPercent(row.ng_rate || 0)));
    });
    box.replaceChildren(chart);
  }

  function table(causes) {
    const body = document.querySelector("#causes-table tbody");
    body.replaceChildren(...causes.map((cause, i) => lw.el("tr", {},
      lw.el("td", {}, i + 1),
      lw.el("td", {}, lw.paramLabel(cause.param)),
      lw.el("td", {}, lw.el("span", { class: `status ${cause.status}` }, cause.status)),
      lw.el("td", {}, cause.sentence),
      lw.el("td", { class: "num" }, cause.frames_in),
    )));
  }

  async function rank() {
    const error = document.getElementById("causes-error");
    error.hidden = true;
    const body = request();
    try {
      const report = await lw.postJson("/v1/analytics/causes", body);
      document.getElementById("causes-summary").textContent =
        `${report.frames} frames, ${report.hits} with the outcome (${lw.formatPercent(report.base_rate || 0)}).`;
      ratioChart(report.causes);
      table(report.causes);
      await binsChart(body, report.causes[0]);
      lw.setConnection("connected", true);
    } catch (err) {
      if (err instanceof lw.AuthError) throw err;
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  const showLogin = lw.signIn(() => rank().catch((err) => showLogin(err.message)));
  document.getElementById("causes-form").addEventListener("submit", (event) => {
    event.preventDefault();
    rank().catch((err) => showLogin(err.message));
  });
})();
