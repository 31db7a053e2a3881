// Shared by the dashboard pages: the API key, calls to the API, small DOM and formatting helpers.
"use strict";

const lw = (() => {
  const KEY_NAME = "linewatch.apiKey";

  class AuthError extends Error {}

  function apiKey() {
    return sessionStorage.getItem(KEY_NAME) || "";
  }

  async function call(path, options = {}) {
    const headers = { "X-API-Key": apiKey(), ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 || response.status === 403) {
      throw new AuthError(response.status === 401 ? "An API key is needed." : "This API key is not accepted.");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) { /* not JSON */ }
      const error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      error.status = response.status;
      throw error;
    }
    return response;
  }

  async function json(path) {
    return (await call(path)).json();
  }

  // POST a JSON body, answer the JSON reply (analytics queries).
  async function postJson(path, body) {
    const options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    return (await call(path, options)).json();
  }

  // An image the API serves, as an object URL (an <img src> cannot send the key itself).
  async function imageUrl(path) {
    return URL.createObjectURL(await (await call(path)).blob());
  }

  // el("td", {class: "num"}, "text", childNode): text is always set as text, never as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function verdictBadge(verdict) {
    const kind = { NG: "ng", REVIEW: "review" }[verdict] || "ok";
    return el("span", { class: `badge ${kind}` }, verdict);
  }

  // A time of today alone ("14:02:11"); of another day with its date ("3 Dec 14:02:11", and the
  // year when it is not this year's), so that an old record never reads as today's.
  function formatClock(when, seconds = true) {
    const d = when instanceof Date ? when : new Date(when);
    const now = new Date();
    const time = d.toLocaleTimeString([], seconds
      ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
      : { hour: "2-digit", minute: "2-digit" });
    if (d.toDateString() === now.toDateString()) return time;
    const year = d.getFullYear() === now.getFullYear() ? {} : { year: "numeric" };
    return `${d.toLocaleDateString([], { day: "numeric", month: "short", ...year })} ${time}`;
  }

  function formatTime(iso) {
    return formatClock(iso);
  }

  function formatDateTime(iso) {
    return new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "medium" });
  }

  function formatAgo(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function formatPercent(share) {
    return share === null || share === undefined ? "–" : `${(100 * share).toFixed(1)} %`;
  }

  function label(name) {
    return String(name).replaceAll("_", " ");
  }

  // Process parameter names carry their unit as a suffix (mould_temp_c, injection_speed_mm_s):
  // shown as "mould temp (°C)", "injection speed (mm/s)". Longer suffixes are tried first.
  const UNIT_SUFFIXES = [
    ["_mm_s", "mm/s"], ["_m_s", "m/s"], ["_l_min", "l/min"], ["_kpa", "kPa"], ["_mpa", "MPa"],
    ["_bar", "bar"], ["_pa", "Pa"], ["_rpm", "rpm"], ["_pct", "%"], ["_ms", "ms"], ["_mm", "mm"],
    ["_kn", "kN"], ["_hz", "Hz"], ["_kw", "kW"], ["_c", "°C"], ["_k", "K"], ["_s", "s"],
    ["_v", "V"], ["_a", "A"], ["_g", "g"],
  ];

  function paramLabel(name) {
    const text = String(name);
    for (const [suffix, unit] of UNIT_SUFFIXES) {
      if (text.length > suffix.length && text.toLowerCase().endsWith(suffix)) {
        return `${label(text.slice(0, -suffix.length))} (${unit})`;
      }
    }
    return label(text);
  }

  function setConnection(text, ok) {
    const node = document.getElementById("connection");
    node.textContent = text;
    node.className = `connection ${ok ? "live" : "down"}`;
  }

  // Show the login box until a key is accepted, then call start(); sign out forgets the key.
  function signIn(start) {
    const login = document.getElementById("login");
    const app = document.getElementById("app");
    const signOut = document.getElementById("sign-out");
    const error = document.getElementById("login-error");

    function showLogin(message) {
      app.hidden = true;
      signOut.hidden = true;
      login.hidden = false;
      error.textContent = message || "";
      document.getElementById("api-key").focus();
    }

    async function tryKey() {
      try {
        await call("/v1/status?window_min=1&lookback_h=1");
      } catch (err) {
        showLogin(err instanceof AuthError ? err.message : `The server did not answer: ${err.message}`);
        return;
      }
      login.hidden = true;
      app.hidden = false;
      signOut.hidden = false;
      start();
    }

    document.getElementById("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_NAME, document.getElementById("api-key").value.trim());
      tryKey();
    });
    signOut.addEventListener("click", () => {
      sessionStorage.removeItem(KEY_NAME);
      window.location.reload();
    });
    if (apiKey()) tryKey();
    else showLogin("");
    return showLogin;
  }

  return {
    AuthError, json, postJson, imageUrl, el, verdictBadge, formatClock, formatTime, formatDateTime, formatAgo, formatPercent,
    label, paramLabel, setConnection, signIn,
  };
})();
