/* CLaaS GUI helpers shared by every page: REST calls with the session, DOM building,
   formatting, status badges and a reconnecting websocket. */
(function () {
  "use strict";

  const csrfToken = () => {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  };

  class ApiError extends Error {
    constructor(status, body) {
      const message = (body && body.error) || `The server answered ${status}.`;
      super(message);
      this.status = status;
      this.details = (body && body.details) || {};
    }
  }

  /** Call the REST API with the session cookie; JSON in, JSON out, errors as ApiError. */
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = csrfToken();
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, { error: "The server cannot be reached; check your connection." });
    }
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await response.json().catch(() => null) : null;
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /** el("td", {class: "num"}, "text", child): text children are always set as text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(status, label) {
    return el("span", { class: `badge ${status || ""}`, "data-status": status || "" }, label || status || "—");
  }

  const fmt = {
    pct(x, digits = 1) { return typeof x === "number" && isFinite(x) ? (100 * x).toFixed(digits) + " %" : "—"; },
    num(x, digits = 3) { return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "—"; },
    signed(x, digits = 3) {
      return typeof x === "number" && isFinite(x) ? (x > 0 ? "+" : "") + x.toFixed(digits) : "—";
    },
    int(x) { return typeof x === "number" && isFinite(x) ? Math.round(x).toLocaleString("en-US") : "—"; },
    duration(s) {
      if (typeof s !== "number" || !isFinite(s) || s < 0) return "—";
      s = Math.round(s);
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
      const pad = (v) => String(v).padStart(2, "0");
      return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
    },
    seconds(s) { return typeof s === "number" && isFinite(s) ? (s < 10 ? s.toFixed(2) : s.toFixed(1)) + " s" : "—"; },
    date(iso) {
      if (!iso) return "—";
      const d = new Date(iso);
      return isNaN(d) ? "—" : d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
    },
    bytes(n) {
      if (typeof n !== "number") return "—";
      const units = ["B", "KB", "MB", "GB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
    },
  };

  /** A websocket that reconnects with backoff; `url(lastId)` builds the address each time. */
  function socket(url, { onMessage, onOpen, onClose, onRefused }) {
    let ws = null, delay = 500, stopped = false;
    const open = () => {
      if (stopped) return;
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      ws = new WebSocket(`${scheme}://${location.host}${url()}`);
      ws.onopen = () => { delay = 500; onOpen && onOpen(); };
      ws.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (err) { console.error(err); } };
      ws.onclose = (e) => {
        onClose && onClose(e);
        // 4403/4404: the server refuses this subscription; retrying would not help.
        if (e.code === 4403 || e.code === 4404) { stopped = true; onRefused && onRefused(e.code); return; }
        if (!stopped) { setTimeout(open, delay); delay = Math.min(delay * 2, 10000); }
      };
    };
    open();
    return { close() { stopped = true; if (ws) ws.close(); } };
  }

  /** Show a dismissable message at the top of the page. */
  function flash(message, kind = "error") {
    let box = document.getElementById("flash");
    if (!box) {
      box = el("div", { id: "flash", role: "alert" });
      document.querySelector("main").prepend(box);
    }
    box.className = `alert ${kind}`;
    box.textContent = message;
    box.hidden = false;
  }

  const palette = ["#2456d6", "#e0592a", "#1d8a4e", "#8e44ad", "#c99a06", "#0f8b8d", "#c53030",
                   "#4a5568", "#d53f8c", "#2c7a7b"];

  /** Background colour of an accuracy cell: red (0) through amber to green (1). */
  function heatColor(value) {
    const v = Math.max(0, Math.min(1, value));
    const hue = 120 * v;
    return `hsl(${hue}, 65%, ${88 - 30 * v}%)`;
  }

  if (window.Chart) {
    Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
    Chart.defaults.color = "#5f6b7a";
    Chart.defaults.animation.duration = 250;
    Chart.defaults.maintainAspectRatio = false;
  }

  window.CLaaS = {
    api, ApiError, el, badge, fmt, socket, flash, palette, heatColor,
    username: document.body.dataset.username,
  };
})();
