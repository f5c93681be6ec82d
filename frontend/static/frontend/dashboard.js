/* Dashboard: the user's experiments, models and deployments; active experiments update live. */
(function () {
  "use strict";
  const { api, el, badge, fmt, socket, username } = window.CLaaS;
  const RESULTS_FETCH_LIMIT = 30;
  const sockets = new Map();

  function emptyRow(table, text, cols) {
    const body = table.querySelector("tbody");
    body.replaceChildren(el("tr", {}, el("td", { colspan: cols, class: "empty" }, text)));
  }

  function progressCell(progress) {
    const pct = Math.round(100 * (progress || 0));
    return [el("span", { class: "mini-progress" }, el("span", { style: `width:${pct}%` })), `${pct} %`];
  }

  function modelLabel(opts) {
    const model = opts.model || {};
    if (model.registered) return `${model.registered} v${model.version}`;
    return model.architecture || "—";
  }

  function experimentRow(exp) {
    const opts = exp.options || {};
    const done = exp.status === "completed";
    const row = el("tr", { "data-exp": exp.exp_name },
      el("td", {}, el("input", { type: "checkbox", class: "pick", value: exp.exp_name, disabled: !done,
                                 title: done ? "Select to compare" : "Only completed experiments compare",
                                 "aria-label": `Select ${exp.exp_name}` })),
      el("td", {}, el("a", { href: `/experiments/${encodeURIComponent(exp.exp_name)}/` }, exp.exp_name)),
      el("td", {}, (opts.strategy || {}).name || "—"),
      el("td", {}, (opts.benchmark || {}).name || "—"),
      el("td", {}, modelLabel(opts)),
      el("td", { class: "status" }, badge(exp.status)),
      el("td", { class: "num progress-cell" }, progressCell(exp.progress)),
      el("td", { class: "num accuracy" }, "—"),
      el("td", { class: "subtle" }, fmt.date(exp.created_at)),
    );
    return row;
  }

  async function fillAccuracy(row, name) {
    try {
      const results = await api("GET", `/base-scenario/${username}/results/${encodeURIComponent(name)}`);
      row.querySelector(".accuracy").textContent = fmt.pct((results.metrics || {}).final_accuracy);
    } catch (err) { /* the row keeps its dash */ }
  }

  function watch(row, name) {
    let lastId = 0;
    const ws = socket(() => `/ws/experiments/${username}/${encodeURIComponent(name)}/?after=${lastId}`, {
      onMessage(event) {
        if (event.id <= lastId) return;
        lastId = event.id;
        if (typeof event.progress === "number") row.querySelector(".progress-cell").replaceChildren(...progressCell(event.progress));
        if (event.type === "status") {
          row.querySelector(".status").replaceChildren(badge(event.status));
          if (event.status === "completed") {
            row.querySelector(".pick").disabled = false;
            fillAccuracy(row, name);
          }
          if (["completed", "failed", "cancelled"].includes(event.status)) {
            ws.close();
            sockets.delete(name);
            updateRunning();
          }
        }
      },
    });
    sockets.set(name, ws);
  }

  function updateRunning() {
    const rows = document.querySelectorAll("#experiments-table .status .badge");
    const active = [...rows].filter((b) => ["queued", "running"].includes(b.dataset.status)).length;
    document.getElementById("count-running").textContent = active ? `${active} active` : "";
  }

  async function loadExperiments() {
    const table = document.getElementById("experiments-table");
    let experiments;
    try {
      experiments = await api("GET", "/api/experiments/");
    } catch (err) {
      emptyRow(table, err.message, 9);
      return;
    }
    document.getElementById("count-experiments").textContent = experiments.length;
    if (!experiments.length) {
      emptyRow(table, "No experiments yet. Set one up with “New experiment”.", 9);
      return;
    }
    const body = table.querySelector("tbody");
    body.replaceChildren();
    let fetched = 0;
    for (const exp of experiments) {
      const row = experimentRow(exp);
      body.append(row);
      if (exp.status === "completed" && fetched++ < RESULTS_FETCH_LIMIT) fillAccuracy(row, exp.exp_name);
      if (exp.status === "queued" || exp.status === "running") watch(row, exp.exp_name);
    }
    updateRunning();
  }

  async function loadModels() {
    const table = document.getElementById("models-table");
    try {
      const models = await api("GET", "/api/models/");
      document.getElementById("count-models").textContent = models.length;
      if (!models.length) return emptyRow(table, "No registered models yet.", 4);
      table.querySelector("tbody").replaceChildren(...models.map((m) => el("tr", {},
        el("td", {}, el("a", { href: `/models/${encodeURIComponent(m.name)}/` }, m.name)),
        el("td", {}, m.architecture || "—"),
        el("td", { class: "num" }, Array.isArray(m.versions) ? m.versions.length : (m.n_versions ?? m.latest_version ?? "—")),
        el("td", { class: "subtle" }, fmt.date(m.created_at)),
      )));
    } catch (err) {
      emptyRow(table, err.status === 404 ? "The model registry is not available on this server." : err.message, 4);
    }
  }

  async function loadDeployments() {
    const table = document.getElementById("deployments-table");
    try {
      const deployments = await api("GET", "/api/deployments/");
      document.getElementById("count-deployments").textContent = deployments.length;
      if (!deployments.length) return emptyRow(table, "No deployments yet.", 4);
      table.querySelector("tbody").replaceChildren(...deployments.map((d) => {
        const champion = d.champion_version ?? (d.champion || {}).version;
        const last = d.last_drift_check || (d.drift_checks || []).slice(-1)[0];
        return el("tr", {},
          el("td", {}, el("a", { href: `/deployments/${encodeURIComponent(d.name)}/` }, d.name)),
          el("td", {}, champion ? badge("champion", `v${champion}`) : "—"),
          el("td", {}, badge(d.status || "active")),
          el("td", {}, last ? [last.is_drift ? badge("drift", "drift") : badge("ok", "no drift"), " ",
                               el("span", { class: "subtle small" }, fmt.date(last.created_at || last.time))] : "—"),
        );
      }));
    } catch (err) {
      emptyRow(table, err.status === 404 ? "Deployments are not available on this server." : err.message, 4);
    }
  }

  document.getElementById("compare-selected").addEventListener("click", (e) => {
    const picked = [...document.querySelectorAll("#experiments-table .pick:checked")].map((c) => c.value);
    if (!picked.length) return;
    e.preventDefault();
    location.href = "/compare/?" + picked.map((n) => "exp=" + encodeURIComponent(n)).join("&");
  });

  loadExperiments();
  loadModels();
  loadDeployments();
})();
