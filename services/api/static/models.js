// Each model's operating curve: estimated false-alarm and miss rates at every threshold, with the
// NG threshold and the REVIEW band's edge marked, and the rates estimated at them.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 720;
  const HEIGHT = 260;
  const PAD = { left: 48, right: 16, top: 14, bottom: 34 };

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chart(model) {
    const points = model.curve;
    const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "curve", role: "img",
      "aria-label": `operating curve of ${model.name} ${model.version}` });
    if (!points.length) return lw.el("p", { class: "empty" }, "No operating curve on this card (retrain to get one).");
    const lo = Math.min(points[0].threshold, model.review_threshold ?? Infinity, model.ng_threshold);
    const hi = Math.max(points[points.length - 1].threshold, model.ng_threshold);
    const x = (t) => PAD.left + (WIDTH - PAD.left - PAD.right) * ((t - lo) / Math.max(1e-12, hi - lo));
    const y = (r) => PAD.top + (HEIGHT - PAD.top - PAD.bottom) * (1 - r);
    for (const r of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(r), y2: y(r), class: "grid" }));
      root.append(svg("text", { x: PAD.left - 6, y: y(r) + 4, "text-anchor": "end", class: "tick" }, `${r * 100}%`));
    }
    const line = (key, cls) => svg("polyline", {
      class: cls, fill: "none",
      points: points.map((p) => `${x(p.threshold).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "),
    });
    root.append(line("false_alarm_rate", "false-alarms"), line("miss_rate", "misses"));
    // the REVIEW edge labelled on its left, the NG threshold on its right: they are often close
    const mark = (t, label, cls, left) => {
      root.append(svg("line", { x1: x(t), x2: x(t), y1: PAD.top, y2: HEIGHT - PAD.bottom, class: `mark ${cls}` }));
      root.append(svg("text", { x: x(t) + (left ? -4 : 4), y: PAD.top + 12, class: "tick",
        "text-anchor": left ? "end" : "start" }, label));
    };
    if (model.review_threshold !== null && model.review_threshold < model.ng_threshold) {
      mark(model.review_threshold, "REVIEW", "review", true);
    }
    mark(model.ng_threshold, "NG", "ng", false);
    root.append(svg("text", { x: WIDTH / 2, y: HEIGHT - 6, "text-anchor": "middle", class: "tick" }, "image score threshold"));
    return root;
  }

  function card(model) {
    const e = model.estimates;
    const rows = [
      ["False alarms (good called NG)", lw.formatPercent(e.false_alarm_rate)],
      ["Misses (defective called OK)", lw.formatPercent(e.miss_rate)],
      ["REVIEW share of good parts", lw.formatPercent(e.good_review_share)],
      ["REVIEW share of defective parts", lw.formatPercent(e.defect_review_share)],
      ["Estimated from", `${e.n_goods ?? 0} ${model.goods || ""} good and ${e.n_defects ?? 0} ${model.defects || ""} defect scores`],
      ["NG threshold", `${model.ng_threshold.toFixed(4)} (target ${lw.formatPercent(model.target_fpr)} false alarms)`],
      ["REVIEW from", model.review_threshold === null ? "no band" : model.review_threshold.toFixed(4)],
    ];
    return lw.el("section", { class: "panel model", "data-recipe": model.recipe },
      lw.el("h2", {}, `${model.recipe}: ${model.name} ${model.version} (${model.kind})`),
      chart(model),
      lw.el("table", { class: "estimates" }, lw.el("tbody", {},
        ...rows.map(([name, value]) => lw.el("tr", {}, lw.el("th", {}, name), lw.el("td", { class: "num" }, value))))));
  }

  async function load() {
    const { models } = await lw.json("/v1/models");
    document.getElementById("models-empty").hidden = models.length > 0;
    document.getElementById("models").replaceChildren(...models.map(card));
    lw.setConnection("loaded", true);
  }

  const showLogin = lw.signIn(() => load().catch((err) => {
    if (err instanceof lw.AuthError) showLogin(err.message);
    else lw.setConnection(err.message, false);
  }));
})();
