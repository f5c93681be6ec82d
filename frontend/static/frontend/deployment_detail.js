/* One deployment: drift checks against the threshold, versions with the champion, update
   history with reasons, rollback. Refreshed whenever ws/deployments/<user>/<name>/ reports. */
(function () {
  "use strict";
  const { api, el, fmt, badge, socket, username } = window.CLaaS;
  const root = document.getElementById("deployment");
  const name = root.dataset.name;
  const path = `/api/deployments/${encodeURIComponent(name)}`;
  const first = (...values) => values.find((v) => v !== undefined && v !== null);

  const chart = new Chart(document.getElementById("drift-chart"), {
    type: "line",
    data: { datasets: [] },
    options: {
      parsing: false,
      scales: {
        x: { type: "linear", min: 1, offset: true, ticks: { precision: 0 }, title: { display: true, text: "drift check" } },
        y: { min: 0, max: 1, title: { display: true, text: "p-value" } },
      },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: { callbacks: { label: (c) => c.raw.label || `${c.dataset.label}: ${fmt.num(c.parsed.y)}` } },
      },
    },
  });

  const championOf = (d) => first(d.champion_version, (d.champion || {}).version, null);
  const thresholdOf = (d, check) => first((check || {}).threshold, (d.detector || {}).p_val, 0.05);
  const accuracyOf = (v) => first(v.validation_accuracy, v.accuracy, (v.metrics || {}).accuracy, (v.metrics || {}).validation_accuracy);

  function renderChart(d) {
    const checks = d.drift_checks || [];
    const threshold = thresholdOf(d);
    const points = checks.map((c, i) => ({
      x: i + 1, y: first(c.p_val, 0),
      label: `${fmt.date(c.created_at)}: p = ${fmt.num(first(c.p_val, NaN), 4)}${c.is_drift ? " (drift)" : ""}` +
             (c.n_samples ? `, ${c.n_samples} samples` : ""),
    }));
    chart.data.datasets = [
      { label: "p-value", data: points, borderColor: "#2456d6", backgroundColor: "#2456d6", borderWidth: 2,
        pointRadius: 5, pointBackgroundColor: checks.map((c) => (c.is_drift ? "#c53030" : "#1d8a4e")) },
      { label: `threshold (p < ${threshold} is drift)`, data: points.length ? [{ x: 1, y: threshold }, { x: points.length, y: threshold }] : [],
        borderColor: "#c53030", borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0 },
    ];
    chart.options.scales.x.max = Math.max(points.length, 2);
    chart.update();
    document.getElementById("drift-box").dataset.points = points.length;
    document.getElementById("threshold-note").textContent = `red points: drift (p-value below ${threshold})`;
  }

  function renderVersions(d) {
    const champion = championOf(d);
    const versions = [...(d.versions || [])].sort((a, b) => b.version - a.version);
    const body = document.querySelector("#versions-table tbody");
    if (!versions.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No versions.")));
      return;
    }
    body.replaceChildren(...versions.map((v) => {
      const isChampion = v.version === champion || v.is_champion === true;
      const aliases = (v.aliases || []).filter((a) => a !== "champion");
      return el("tr", { "data-version": v.version, class: isChampion ? "champion-row" : "" },
        el("td", {}, `v${v.version} `, isChampion ? badge("champion", "champion") : "",
           aliases.map((a) => badge(a, a))),
        el("td", { class: "small" }, first(v.origin, v.source, v.reason, "—")),
        el("td", { class: "num" }, fmt.pct(accuracyOf(v))),
        el("td", { class: "subtle" }, fmt.date(v.created_at)),
        el("td", {}, isChampion ? "" : el("button", { class: "btn small rollback", "data-version": v.version,
                                                      onclick: () => rollback(v.version) }, "Roll back to this")));
    }));
  }

  function renderUpdates(d) {
    const updates = [...(d.updates || [])].reverse();
    const body = document.querySelector("#updates-table tbody");
    if (!updates.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No updates yet: they start when drift is detected.")));
      return;
    }
    body.replaceChildren(...updates.map((u) => {
      const candidate = first(u.candidate_version, u.version, (u.candidate || {}).version);
      const compared = [first(u.champion_accuracy, u.old_accuracy), first(u.candidate_accuracy, u.new_accuracy)];
      return el("tr", { "data-update": u.id, "data-status": u.status },
        el("td", {}, u.id),
        el("td", {}, badge(u.status)),
        el("td", {}, candidate ? `v${candidate}` : "—"),
        el("td", { class: "small" }, first(u.reason, u.error, "—"),
           compared.every((x) => typeof x === "number")
             ? el("div", { class: "subtle" }, `validation: champion ${fmt.pct(compared[0])} → candidate ${fmt.pct(compared[1])}`) : ""),
        el("td", { class: "subtle small" }, fmt.date(first(u.finished_at, u.created_at))));
    }));
  }

  function renderSummary(d) {
    const champion = championOf(d);
    document.getElementById("champion-badge").replaceChildren(champion ? badge("champion", `champion v${champion}`) : "");
    document.getElementById("s-champion").textContent = champion ? `v${champion}` : "—";
    const src = d.source || {};
    document.getElementById("s-source").textContent =
      src.exp_name ? `from experiment ${src.exp_name}` : src.registered ? `from ${src.registered} v${src.version ?? ""}` : "";
    const checks = d.drift_checks || [];
    document.getElementById("s-checks").textContent = first(d.n_drift_checks, checks.length);
    const drifts = checks.filter((c) => c.is_drift).length;
    document.getElementById("s-drifts").textContent = drifts ? `${drifts} with drift` : "";
    const det = d.detector || {};
    document.getElementById("s-detector").textContent = det.name ? `${det.name}, p < ${det.p_val}` : "";
    const updates = d.updates || [];
    document.getElementById("s-updates").textContent = updates.length;
    const promoted = updates.filter((u) => u.status === "promoted").length;
    document.getElementById("s-promoted").textContent = updates.length ? `${promoted} promoted` : "";
    const up = d.update || {};
    document.getElementById("s-policy").textContent = up.trigger
      ? `on ${up.trigger}, ${((up.strategy || {}).name) || "replay"}, at least ${up.min_samples} samples` : "";
  }

  let loading = null, again = false;
  async function load() {
    // Bursts of socket messages collapse into one request at a time.
    if (loading) { again = true; return loading; }
    loading = (async () => {
      try {
        const d = await api("GET", path);
        renderSummary(d);
        renderChart(d);
        renderVersions(d);
        renderUpdates(d);
        root.dataset.champion = championOf(d) ?? "";
        root.dataset.ready = "1";
      } catch (err) {
        window.CLaaS.flash(err.status === 404 ? `You have no deployment named “${name}”.` : err.message);
      }
    })();
    await loading;
    loading = null;
    if (again) { again = false; load(); }
  }

  async function rollback(version) {
    if (!confirm(`Make version ${version} the champion of “${name}” again?`)) return;
    try {
      await api("POST", `${path}/rollback`, { version });
      const box = document.getElementById("notes");
      box.textContent = `Rolled back: version ${version} is the champion.`;
      box.hidden = false;
      await load();
    } catch (err) {
      window.CLaaS.flash(err.message);
    }
  }

  const live = document.getElementById("live-indicator");
  socket(() => `/ws/deployments/${username}/${encodeURIComponent(name)}/`, {
    onMessage: () => load(),
    onOpen() { live.textContent = "● live"; live.style.color = "var(--ok)"; load(); },
    onClose() { live.textContent = "○ reconnecting…"; live.style.color = ""; },
    onRefused() { live.textContent = ""; },
  });
  load();
})();
