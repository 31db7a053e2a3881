// One inspection: heat-map overlay, defects, the process snapshot and the step timings.
"use strict";

(() => {
  const frameId = new URLSearchParams(window.location.search).get("frame_id") || "";

  function fact(list, name, value) {
    list.append(lw.el("dt", {}, name), lw.el("dd", {}, value === null || value === undefined ? "–" : value));
  }

  function rows(tableId, cells) {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren(...cells.map((row) => lw.el("tr", {}, ...row)));
  }

  function render(inspection) {
    document.title = `linewatch · ${inspection.part_id || inspection.frame_id}`;
    document.getElementById("verdict").replaceChildren(lw.verdictBadge(inspection.verdict));
    const summary = document.getElementById("summary");
    fact(summary, "Part", inspection.part_id);
    fact(summary, "Line / station", `${inspection.line_id} / ${inspection.station_id}`);
    fact(summary, "Camera", inspection.camera_id);
    fact(summary, "Recipe", inspection.recipe);
    fact(summary, "Captured", lw.formatDateTime(inspection.captured_at));
    fact(summary, "Score", `${inspection.score.toFixed(3)} (NG from 0.5; raw ${inspection.score_raw.toFixed(3)})`);
    fact(summary, "Model", `${inspection.model_name} ${inspection.model_version}`);
    fact(summary, "Frame id", inspection.frame_id);

    rows("defects", inspection.defects.map((d, i) => {
      const b = d.bbox;
      return [
        lw.el("td", {}, i + 1),
        lw.el("td", {}, lw.label(d.defect_class || "anomaly")),
        lw.el("td", {}, lw.el("span", { class: `badge ${d.severity}` }, d.severity)),
        lw.el("td", {}, lw.label(d.location)),
        lw.el("td", { class: "num" }, d.max_score.toFixed(2)),
        lw.el("td", { class: "nowrap" }, `${b.x}, ${b.y}, ${b.width} × ${b.height}`),
        lw.el("td", { class: "num" }, d.area_px),
      ];
    }));
    document.getElementById("no-defects").hidden = inspection.defects.length > 0;

    const process = inspection.process;
    const processFacts = document.getElementById("process");
    const statusNote = { ok: "", stale: " (the latest sample was too old)", missing: " (no process data for this frame)" };
    fact(processFacts, "Status", `${process.status}${statusNote[process.status] || ""}`);
    fact(processFacts, "Machine", process.machine_id);
    fact(processFacts, "Sample age", process.age_s === null ? null : `${process.age_s.toFixed(2)} s`);
    const params = Object.entries(process.params).sort();
    document.getElementById("params").hidden = params.length === 0;
    rows("params", params.map(([name, value]) => [lw.el("td", {}, lw.paramLabel(name)), lw.el("td", { class: "num" }, value)]));

    const timings = Object.entries(inspection.timings_ms);
    const total = timings.reduce((sum, [, ms]) => sum + ms, 0);
    rows("timings", [
      ...timings.map(([step, ms]) => [lw.el("td", {}, step), lw.el("td", { class: "num" }, ms.toFixed(1))]),
      [lw.el("th", {}, "total"), lw.el("th", { class: "num" }, total.toFixed(1))],
    ]);
    document.getElementById("details").hidden = false;
  }

  async function load() {
    if (!frameId) {
      const message = document.getElementById("not-found");
      message.textContent = "No inspection chosen: open one from the dashboard.";
      message.hidden = false;
      return;
    }
    const path = `/v1/inspections/${encodeURIComponent(frameId)}`;
    try {
      render(await lw.json(path));
      lw.setConnection("loaded", true);
    } catch (err) {
      if (err instanceof lw.AuthError) throw err;
      const message = document.getElementById("not-found");
      message.textContent = err.message;
      message.hidden = false;
      return;
    }
    const report = document.getElementById("report");
    report.hidden = false;
    report.addEventListener("click", async () => {
      // fetched with the key, then opened: a plain link could not send it
      const url = await lw.imageUrl(`${path}/report.html`);
      window.open(url, "_blank");
    });
    const img = document.getElementById("overlay");
    lw.imageUrl(`${path}/overlay.png?max_side=1600`)
      .then((url) => { img.src = url; })
      .catch((err) => img.replaceWith(lw.el("p", { class: "empty" }, `No heat map: ${err.message}`)));
  }

  const showLogin = lw.signIn(() => load().catch((err) => showLogin(err.message)));
})();
