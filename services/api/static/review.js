// The review queue: the frames linewatch is unsure of, one at a time on its overlay; a person
// decides (defect or good part), may name the class and drag boxes that become the corrected mask.
"use strict";

(() => {
  const REVIEWER_KEY = "linewatch.reviewer";
  let chosen = null; // the label being reviewed
  let boxes = []; // drawn boxes, as shares of the image: [x0, y0, x1, y1]
  let dragStart = null;

  const canvas = document.getElementById("mask-canvas");
  const img = document.getElementById("overlay");

  function fact(list, name, value) {
    list.append(lw.el("dt", {}, name), lw.el("dd", {}, value === null || value === undefined ? "–" : value));
  }

  function drawBoxes(extra) {
    canvas.width = img.clientWidth;
    canvas.height = img.clientHeight;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "rgba(0, 160, 255, 0.35)";
    ctx.strokeStyle = "#00a0ff";
    for (const [x0, y0, x1, y1] of extra ? [...boxes, extra] : boxes) {
      const [x, y, w, h] = [x0 * canvas.width, y0 * canvas.height, (x1 - x0) * canvas.width, (y1 - y0) * canvas.height];
      ctx.fillRect(x, y, w, h);
      ctx.strokeRect(x, y, w, h);
    }
  }

  function share(event) {
    const rect = canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
  }

  function box(a, b) {
    return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  }

  canvas.addEventListener("mousedown", (event) => { dragStart = share(event); });
  canvas.addEventListener("mousemove", (event) => { if (dragStart) drawBoxes(box(dragStart, share(event))); });
  window.addEventListener("mouseup", (event) => {
    if (!dragStart) return;
    const drawn = box(dragStart, share(event));
    dragStart = null;
    if (drawn[2] - drawn[0] > 0.005 && drawn[3] - drawn[1] > 0.005) boxes.push(drawn);
    drawBoxes();
  });
  document.getElementById("clear-mask").addEventListener("click", () => { boxes = []; drawBoxes(); });
  img.addEventListener("load", () => drawBoxes());

  // The drawn boxes as a PNG mask (white = defect) at the heat map's size, base64.
  function maskPng() {
    if (!boxes.length) return null;
    const ref = chosen.heatmap || chosen.mask;
    const width = ref ? ref.width : 128;
    const height = ref ? ref.height : Math.max(1, Math.round(128 * img.naturalHeight / Math.max(1, img.naturalWidth)));
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#fff";
    for (const [x0, y0, x1, y1] of boxes) {
      ctx.fillRect(Math.floor(x0 * width), Math.floor(y0 * height),
        Math.max(1, Math.ceil((x1 - x0) * width)), Math.max(1, Math.ceil((y1 - y0) * height)));
    }
    return out.toDataURL("image/png").split(",")[1];
  }

  async function choose(label) {
    chosen = label;
    boxes = [];
    document.querySelectorAll("#queue tbody tr").forEach((row) => {
      row.classList.toggle("chosen", row.dataset.frameId === label.frame_id);
    });
    document.getElementById("chosen-verdict").replaceChildren(lw.verdictBadge(label.verdict));
    const facts = document.getElementById("chosen-facts");
    facts.replaceChildren();
    fact(facts, "Captured", lw.formatDateTime(label.captured_at));
    fact(facts, "Line / camera", `${label.line_id} / ${label.camera_id}`);
    fact(facts, "Recipe", label.recipe);
    fact(facts, "Score", `${label.score.toFixed(3)} (NG from 0.5)`);
    fact(facts, "Why queued", label.reasons.join(", "));
    fact(facts, "Model", `${label.model_name} ${label.model_version}`);
    document.getElementById("open-inspection").href = `inspection.html?frame_id=${encodeURIComponent(label.frame_id)}`;
    document.getElementById("decide-result").textContent = "";
    document.getElementById("decide").hidden = false;
    img.removeAttribute("src");
    lw.imageUrl(`/v1/inspections/${encodeURIComponent(label.frame_id)}/overlay.png?max_side=1200`)
      .then((url) => { img.src = url; })
      .catch((err) => { img.alt = `No overlay: ${err.message}`; });
    const { history } = await lw.json(`/v1/labels/${encodeURIComponent(label.frame_id)}`);
    document.getElementById("history").replaceChildren(...history.map((event) => lw.el(
      "li", {}, `${lw.formatClock(event.at)} ${event.actor}: ${event.action} `,
      lw.el("code", {}, JSON.stringify(event.changes)),
    )));
  }

  async function decide(decision) {
    const reviewer = document.getElementById("reviewer").value.trim();
    const result = document.getElementById("decide-result");
    if (!reviewer) {
      result.textContent = "Say who reviews (the reviewer's name is kept in the label's history).";
      return;
    }
    sessionStorage.setItem(REVIEWER_KEY, reviewer);
    const body = { decision, reviewer, expected_revision: chosen.revision };
    const note = document.getElementById("note").value.trim();
    if (note) body.note = note;
    if (decision === "defect") {
      const defectClass = document.getElementById("defect-class").value.trim();
      if (defectClass) body.defect_class = defectClass;
      const mask = maskPng();
      if (mask) body.mask_png_base64 = mask;
    }
    try {
      const label = await lw.postJson(`/v1/labels/${encodeURIComponent(chosen.frame_id)}/review`, body);
      const masked = label.review.mask ? " with a corrected mask" : "";
      document.getElementById("defect-class").value = "";
      document.getElementById("note").value = "";
      await loadQueue(label.frame_id);
      result.textContent = `Recorded: ${label.review.decision}${masked} (revision ${label.revision}).`;
    } catch (err) {
      if (err instanceof lw.AuthError) throw err;
      result.textContent = `Not recorded: ${err.message}`;
    }
  }

  document.getElementById("decide-defect").addEventListener("click", () => decide("defect"));
  document.getElementById("decide-good").addEventListener("click", () => decide("good"));

  async function loadQueue(after) {
    const error = document.getElementById("queue-error");
    let page;
    try {
      page = await lw.json("/v1/labels?status=queued&limit=100");
      error.hidden = true;
      lw.setConnection("loaded", true);
    } catch (err) {
      if (err instanceof lw.AuthError) throw err;
      error.textContent = err.message;
      error.hidden = false;
      return;
    }
    document.getElementById("queue-count").textContent = `(${page.total} waiting)`;
    document.getElementById("queue-empty").hidden = page.items.length > 0;
    const body = document.querySelector("#queue tbody");
    body.replaceChildren(...page.items.map((label) => {
      const row = lw.el("tr", { "data-frame-id": label.frame_id },
        lw.el("td", { class: "nowrap" }, lw.formatClock(label.captured_at)),
        lw.el("td", {}, `${label.line_id} / ${label.camera_id}`),
        lw.el("td", {}, lw.verdictBadge(label.verdict)),
        lw.el("td", { class: "num" }, label.score.toFixed(3)),
        lw.el("td", { class: "num" }, label.priority.toFixed(2)),
        lw.el("td", {}, label.reasons.join(", ")));
      row.addEventListener("click", () => choose(label));
      return row;
    }));
    if (page.items.length) await choose(page.items[0]);
    else if (after) document.getElementById("decide").hidden = true;
  }

  document.getElementById("reviewer").value = sessionStorage.getItem(REVIEWER_KEY) || "";
  const showLogin = lw.signIn(() => loadQueue().catch((err) => showLogin(err.message)));
})();
