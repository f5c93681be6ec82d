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


  // --- forms generated from registry parameter schemas ------------------------------------------
  /** A labelled input for one registry parameter {name, type, default, min, max, choices, help}. */
  function paramField(param, path, value) {
    const id = "f-" + path.replace(/\./g, "-");
    const current = value === undefined ? param.default : value;
    let input;
    if (param.type === "bool") {
      input = el("input", { type: "checkbox", id, checked: !!current });
    } else if (param.choices) {
      // An empty choice stands for "the server's default" when the field starts empty.
      const empty = current === null ? [el("option", { value: "" }, `default${param.placeholder ? ` (${param.placeholder})` : ""}`)] : [];
      input = el("select", { id }, empty, param.choices.map((c) => el("option", { value: c, selected: c === current }, c)));
    } else if (param.type === "int" || param.type === "float") {
      input = el("input", { type: "number", id, step: param.type === "int" ? "1" : "any", placeholder: param.placeholder,
                            value: current === null || current === undefined ? "" : current });
    } else if (param.type === "int_list") {
      input = el("input", { type: "text", id, placeholder: Array.isArray(param.default) ? param.default.join(", ") : "",
                            value: Array.isArray(current) ? current.join(", ") : (current || "") });
    } else {
      input = el("input", { type: "text", id, value: current ?? "", placeholder: param.placeholder });
    }
    input.dataset.path = path;
    input.dataset.type = param.type;
    if (current === null) input.dataset.emptyIsDefault = "1";
    const range = [param.min !== undefined ? `min ${param.min}` : "", param.max !== undefined ? `max ${param.max}` : ""]
      .filter(Boolean).join(", ");
    const help = [param.help, range ? `(${range})` : ""].filter(Boolean).join(" ");
    if (param.type === "bool") {
      return el("div", { class: "field", "data-path": path },
        el("div", { class: "inline field", style: "margin:0" }, input, el("label", { for: id }, param.name)),
        el("div", { class: "help" }, help), el("div", { class: "error" }));
    }
    return el("div", { class: "field", "data-path": path },
      el("label", { for: id }, param.name), input, el("div", { class: "help" }, help), el("div", { class: "error" }));
  }

  function renderParams(container, params, prefix, values) {
    container.replaceChildren(...params.map((p) => paramField(p, `${prefix}.${p.name}`, (values || {})[p.name])));
  }

  function readValue(input) {
    const raw = input.type === "checkbox" ? input.checked : input.value.trim();
    switch (input.dataset.type) {
      case "bool": return raw;
      case "int":
      case "float": {
        if (raw === "") return null;
        const n = Number(raw);
        return isNaN(n) ? raw : n;  // the server explains what is wrong with the text
      }
      case "int_list": {
        if (raw === "") return null;
        const parts = raw.split(/[\s,]+/).filter(Boolean).map(Number);
        return parts.some(isNaN) ? raw : parts;
      }
      default: return raw === "" && input.dataset.emptyIsDefault ? null : raw;
    }
  }

  function collectParams(container) {
    const out = {};
    for (const input of container.querySelectorAll("input[data-path], select[data-path]")) {
      out[input.dataset.path.split(".").pop()] = readValue(input);
    }
    return out;
  }

  function clearErrors(form) {
    for (const f of form.querySelectorAll(".field.invalid")) f.classList.remove("invalid");
    for (const e of form.querySelectorAll(".field .error")) e.textContent = "";
    const box = form.querySelector(".form-error");
    if (box) box.hidden = true;
  }

  /** The visible field an API error is about: a `details` key, else the dotted path the sentence starts with. */
  function fieldForError(form, err) {
    const fields = [...form.querySelectorAll(".field[data-path]")].filter((f) => !f.closest("[hidden]"));
    const byPath = new Map(fields.map((f) => [f.dataset.path, f]));
    for (const key of Object.keys(err.details || {})) if (byPath.has(key)) return byPath.get(key);
    const message = err.message;
    let best = null;
    for (const [path, field] of byPath) {
      const next = message.charAt(path.length);
      if (message.startsWith(path) && (next === "" || " :.,;".includes(next)) &&
          (!best || path.length > best.dataset.path.length)) best = field;
    }
    return best;
  }

  /** Put the server's sentence next to its field, with a summary at the top of the form. */
  function showError(form, err, summary) {
    // A form about one thing (e.g. an upload) names it in data-default-field for errors without a path.
    const fallback = form.dataset.defaultField && form.querySelector(`.field[data-path="${form.dataset.defaultField}"]`);
    const field = fieldForError(form, err) || (err.status === 400 && fallback) || null;
    const box = form.querySelector(".form-error");
    if (field) {
      field.classList.add("invalid");
      field.querySelector(".error").textContent = err.message;
      const details = field.closest("details");
      if (details) details.open = true;
      if (box) box.textContent = summary || "Please correct the highlighted field.";
      field.scrollIntoView({ block: "center" });
      (field.querySelector("input, select, textarea") || field).focus();
    } else if (box) {
      box.textContent = err.message;
      box.scrollIntoView({ block: "center" });
    } else {
      flash(err.message);
    }
    if (box) box.hidden = false;
  }

  const forms = { paramField, renderParams, readValue, collectParams, clearErrors, showError };

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

  const FORMAT_LABELS = { state_dict: "state_dict", pt2: "torch.export (.pt2)", torchscript: "TorchScript" };

  /** One download button per format, each with the line that loads the file in a Python with torch only. */
  function downloadLinks(downloads) {
    return (downloads || []).map((d) => el("div", { class: "download", "data-format": d.format },
      el("a", { class: "btn small", href: d.url, download: "" }, FORMAT_LABELS[d.format] || d.format), " ",
      el("code", { class: "small load-line" }, d.load)));
  }

  window.CLaaS = {
    api, ApiError, el, badge, fmt, socket, flash, palette, heatColor, forms, downloadLinks,
    username: document.body.dataset.username,
  };
})();
