// The line dashboard: camera tiles, NG-rate chart, live feed, alerts and rejected frames, every 2 s.
"use strict";

(() => {
  const POLL_MS = 2000;
  const FEED_SIZE = 20;
  const CHART_MINUTES = 60;
  const STATUS_MINUTES = 10;
  const thumbnails = new Map(); // frame_id → object URL (or a pending promise)
  let showLogin = null;

  function thumbnail(frameId, img) {
    const known = thumbnails.get(frameId);
    if (typeof known === "string") {
      img.src = known;
      return;
    }
    const pending = known || lw.imageUrl(`/v1/inspections/${encodeURIComponent(frameId)}/overlay.png?max_side=160`);
    thumbnails.set(frameId, pending);
    pending.then((url) => {
      thumbnails.set(frameId, url);
      img.src = url;
    }).catch(() => {
      thumbnails.delete(frameId);
      img.replaceWith(lw.el("span", { class: "no-image" }, "no heat map"));
    });
  }

  function forgetThumbnails(keep) {
    for (const [frameId, url] of thumbnails) {
      if (!keep.has(frameId) && typeof url === "string") {
        URL.revokeObjectURL(url);
        thumbnails.delete(frameId);
      }
    }
  }

  function defectSummary(defects) {
    if (!defects.length) return "–";
    const worst = defects[0];
    const more = defects.length > 1 ? ` (+${defects.length - 1})` : "";
    return `${lw.label(worst.defect_class || worst.severity)} · ${lw.label(worst.location)}${more}`;
  }

  function renderFeed(page) {
    const body = document.querySelector("#feed tbody");
    const rows = page.items.map((item) => {
      const link = `inspection.html?frame_id=${encodeURIComponent(item.frame_id)}`;
      const img = lw.el("img", { class: "thumb", alt: `heat map of ${item.part_id || item.frame_id}` });
      thumbnail(item.frame_id, img);
      const row = lw.el("tr", { class: item.verdict === "NG" ? "row-ng" : null, "data-frame-id": item.frame_id },
        lw.el("td", {}, lw.el("a", { href: link, "aria-label": "open inspection" }, img)),
        lw.el("td", { title: lw.formatDateTime(item.captured_at) }, lw.formatTime(item.captured_at)),
        lw.el("td", {}, `${item.line_id} / ${item.camera_id}`),
        lw.el("td", {}, lw.el("a", { href: link }, item.part_id || item.frame_id.slice(-12))),
        lw.el("td", {}, lw.verdictBadge(item.verdict)),
        lw.el("td", { class: "num" }, item.score.toFixed(2)),
        lw.el("td", {}, defectSummary(item.defects)),
      );
      row.addEventListener("click", (event) => {
        if (!event.target.closest("a")) window.location.href = link;
      });
      return row;
    });
    body.replaceChildren(...rows);
    document.getElementById("feed-empty").hidden = rows.length > 0;
    forgetThumbnails(new Set(page.items.map((item) => item.frame_id)));
  }

  function renderStatus(status) {
    document.getElementById("status-window").textContent = `NG rate over the last ${status.window_min} min`;
    const tiles = status.cameras.map((camera) => {
      const idle = camera.frames === 0;
      const last = camera.last_frame_at
        ? lw.el("span", {}, `${lw.formatAgo(camera.last_frame_at)} `, lw.verdictBadge(camera.last_verdict))
        : "never";
      return lw.el("article", { class: `tile ${idle ? "idle" : ""}` },
        lw.el("h3", {}, camera.camera_id, lw.el("small", {}, camera.line_id)),
        lw.el("p", { class: "rate" }, lw.formatPercent(camera.ng_rate)),
        lw.el("p", {}, idle ? "No frames in the window" : `${camera.ng} NG of ${camera.frames} frames`),
        lw.el("p", { class: "muted" }, "Last frame: ", last),
      );
    });
    if (status.line) {
      const facts = lw.el("dl", { class: "facts" });
      for (const [name, value] of Object.entries(status.line)) {
        if (value !== null && typeof value === "object") continue;
        const shown = value === null ? "–" : typeof value === "boolean" ? (value ? "yes" : "no") : value;
        facts.append(lw.el("dt", {}, lw.label(name)), lw.el("dd", {}, shown));
      }
      tiles.unshift(lw.el("article", { class: "tile line" }, lw.el("h3", {}, "Line"), facts));
    }
    if (!tiles.length) tiles.push(lw.el("p", { class: "empty" }, "No camera has sent a frame in the last 24 h."));
    document.getElementById("status-tiles").replaceChildren(...tiles);
  }

  function renderEvents(listId, items, describe, emptyText) {
    const list = document.getElementById(listId);
    const entries = items.map((item) => lw.el("li", {}, ...describe(item)));
    if (!entries.length) entries.push(lw.el("li", { class: "empty" }, emptyText));
    list.replaceChildren(...entries);
  }

  async function refresh() {
    const now = Date.now();
    const from = new Date(now - CHART_MINUTES * 60 * 1000).toISOString();
    const verdict = document.getElementById("ng-only").checked ? "&verdict=NG" : "";
    const [page, status, series, alerts, rejects] = await Promise.all([
      lw.json(`/v1/inspections?limit=${FEED_SIZE}${verdict}`),
      lw.json(`/v1/status?window_min=${STATUS_MINUTES}`),
      lw.json(`/v1/ng-rate?bucket_s=60&from=${encodeURIComponent(from)}`),
      lw.json("/v1/alerts?limit=8"),
      lw.json("/v1/dead-letters?limit=8"),
    ]);
    renderStatus(status);
    const chartEnd = Math.ceil(now / 60000) * 60000; // the end of the current one-minute bucket
    ngChart.draw(document.getElementById("ng-chart"), series, chartEnd - CHART_MINUTES * 60 * 1000, chartEnd);
    renderFeed(page);
    renderEvents("alerts", alerts, (a) => [
      lw.el("span", { class: `badge ${a.severity}` }, a.severity),
      ` ${lw.formatTime(a.raised_at)} `, lw.el("strong", {}, a.line_id), ` ${a.message}`,
    ], "No alerts.");
    renderEvents("dead-letters", rejects, (d) => [
      lw.el("span", { class: "badge neutral" }, d.source),
      ` ${lw.formatTime(d.failed_at)} `, d.reason,
    ], "No rejected frames.");
  }

  async function poll() {
    try {
      await refresh();
      lw.setConnection(`live · updated ${new Date().toLocaleTimeString()}`, true);
    } catch (err) {
      if (err instanceof lw.AuthError) {
        showLogin(err.message);
        return;
      }
      lw.setConnection(`no connection: ${err.message}`, false);
    }
    setTimeout(poll, POLL_MS);
  }

  let started = false;
  showLogin = lw.signIn(() => {
    if (started) return;
    started = true;
    document.getElementById("ng-only").addEventListener("change", () => refresh().catch(() => {}));
    poll();
  });
})();
