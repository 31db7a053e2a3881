// The NG-rate chart: one line per production line (NG share per bucket), frame counts as grey bars.
"use strict";

const ngChart = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 900;
  const HEIGHT = 240;
  const PAD = { left: 48, right: 16, top: 14, bottom: 28 };
  const Y_LIMITS = [0.05, 0.1, 0.2, 0.5, 1]; // the y axis ends at the first that holds the highest rate
  const COLOURS = ["#c62828", "#1565c0", "#6a1b9a", "#ef6c00", "#00838f", "#2e7d32"];

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // points: [{bucket_start, line_id, total, ng}] → Map(line → Map(bucket ms → {total, ng}))
  function byLine(points) {
    const lines = new Map();
    for (const p of points) {
      const t = new Date(p.bucket_start).getTime();
      if (!lines.has(p.line_id)) lines.set(p.line_id, new Map());
      const buckets = lines.get(p.line_id);
      const b = buckets.get(t) || { total: 0, ng: 0 };
      b.total += p.total;
      b.ng += p.ng;
      buckets.set(t, b);
    }
    return lines;
  }

  function draw(container, series, fromMs, toMs) {
    container.replaceChildren();
    if (!series.points.length) {
      container.append(lw.el("p", { class: "empty" }, "No inspections in the last 60 minutes."));
      return;
    }
    const lines = byLine(series.points);
    const totals = new Map();
    let maxRate = 0;
    for (const buckets of lines.values()) {
      for (const [t, b] of buckets) {
        totals.set(t, (totals.get(t) || 0) + b.total);
        maxRate = Math.max(maxRate, b.ng / b.total);
      }
    }
    const yMax = Y_LIMITS.find((limit) => maxRate <= limit) || 1;
    const maxTotal = Math.max(...totals.values());
    const plotW = WIDTH - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const x = (t) => PAD.left + ((t - fromMs) / (toMs - fromMs)) * plotW;
    const y = (rate) => PAD.top + plotH - (rate / yMax) * plotH;
    const bucketW = Math.max(2, (series.bucket_s * 1000 / (toMs - fromMs)) * plotW - 2);

    const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": "NG rate over time" });
    for (let i = 0; i <= 5; i++) {
      const rate = (yMax * i) / 5;
      root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(rate), y2: y(rate), class: "grid" }));
      root.append(svg("text", { x: PAD.left - 6, y: y(rate) + 4, class: "axis", "text-anchor": "end" },
        `${Math.round(rate * 100)} %`));
    }
    const tenMinutes = 10 * 60 * 1000;
    for (let t = Math.ceil(fromMs / tenMinutes) * tenMinutes; t <= toMs; t += tenMinutes) {
      const label = lw.formatClock(new Date(t), false);
      root.append(svg("text", { x: x(t), y: HEIGHT - 8, class: "axis", "text-anchor": "middle" }, label));
    }
    for (const [t, total] of totals) {
      const h = (total / maxTotal) * plotH * 0.35;
      const bar = svg("rect", { x: x(t), y: PAD.top + plotH - h, width: bucketW, height: h, class: "volume" });
      bar.append(svg("title", {}, `${lw.formatClock(new Date(t))}: ${total} frames`));
      root.append(bar);
    }
    let colour = 0;
    const legend = lw.el("div", { class: "legend" });
    for (const [line, buckets] of [...lines].sort()) {
      const stroke = COLOURS[colour++ % COLOURS.length];
      const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
      const mid = (t) => x(t) + bucketW / 2;
      root.append(svg("polyline", {
        points: sorted.map(([t, b]) => `${mid(t)},${y(b.ng / b.total)}`).join(" "),
        class: "series", stroke,
      }));
      for (const [t, b] of sorted) {
        const dot = svg("circle", { cx: mid(t), cy: y(b.ng / b.total), r: 3, fill: stroke, class: "point" });
        dot.append(svg("title", {},
          `${line} ${lw.formatClock(new Date(t))}: ${b.ng} NG of ${b.total} (${lw.formatPercent(b.ng / b.total)})`));
        root.append(dot);
      }
      legend.append(lw.el("span", { class: "key", style: `--colour: ${stroke}` }, line));
    }
    legend.append(lw.el("span", { class: "key volume-key" }, "frames per bucket"));
    container.append(root, legend);
  }

  return { draw };
})();
