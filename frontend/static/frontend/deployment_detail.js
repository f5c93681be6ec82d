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

  function renderChart(d) {
    const checks = d.drift_checks || [];
    // Batch detectors answer a p-value (drift below the threshold); online ones a distance
    // (drift above the threshold).
    const byPValue = checks.length === 0 || checks.some((c) => typeof c.p_val === "number");
    const value = (c) => (byPValue ? c.p_val : c.distance);
    const points = checks.map((c, i) => ({
      x: i + 1, y: first(value(c), 0),
      label: `${fmt.date(c.created_at)} · ${c.n_samples} samples · ${byPValue ? "p" : "distance"} = ` +
             `${fmt.num(first(value(c), NaN), 4)}${c.is_drift ? " · drift" : ""}`,
    }));
    const thresholds = checks.map((c, i) => ({ x: i + 1, y: first(c.threshold, (d.detector || {}).p_val, null) }))
      .filter((p) => typeof p.y === "number");
    const rule = byPValue ? "below" : "above";
    chart.data.datasets = [
      { label: byPValue ? "p-value" : "distance", data: points, borderColor: "#2456d6", backgroundColor: "#2456d6",
        borderWidth: 2, pointRadius: 5, pointHoverRadius: 7,
        pointBackgroundColor: checks.map((c) => (c.is_drift ? "#c53030" : "#1d8a4e")),
        pointBorderColor: checks.map((c) => (c.is_drift ? "#c53030" : "#1d8a4e")) },
      { label: `threshold (drift ${rule} it)`, data: thresholds, borderColor: "#c53030", borderDash: [6, 4],
        borderWidth: 1.5, pointRadius: 0, stepped: true },
    ];
    chart.options.scales.y = byPValue
      ? { min: 0, max: 1, title: { display: true, text: "p-value" } }
      : { beginAtZero: true, title: { display: true, text: "distance" } };
    chart.options.scales.x.max = Math.max(points.length, 2);
    chart.update();
    document.getElementById("drift-box").dataset.points = points.length;
    document.getElementById("drift-box").dataset.drifts = checks.filter((c) => c.is_drift).length;
    document.getElementById("threshold-note").textContent = checks.length
      ? `red points: drift (${byPValue ? "p-value" : "distance"} ${rule} the dashed threshold)` : "no checks yet: ingest data";
  }

  function renderChecks(d) {
    const latest = [...(d.drift_checks || [])].reverse().slice(0, 20);
    document.querySelector("#checks-table tbody").replaceChildren(...latest.map((c) => el("tr", {},
      el("td", {}, c.id), el("td", { class: "subtle small" }, fmt.date(c.created_at)),
      el("td", { class: "num" }, fmt.int(c.n_samples)), el("td", { class: "num" }, fmt.num(c.p_val, 4)),
      el("td", { class: "num" }, fmt.num(c.distance, 4)), el("td", { class: "num" }, fmt.num(c.threshold, 4)),
      el("td", {}, c.is_drift ? badge("drift", "drift") : badge("ok", "no drift")),
      el("td", {}, c.champion_version ? `v${c.champion_version}` : "—"))));
  }

  function renderVersions(d) {
    const champion = championOf(d);
    const versions = [...(d.versions || [])].sort((a, b) => b.version - a.version);
    const body = document.querySelector("#versions-table tbody");
    if (!versions.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No versions.")));
      return;
    }
    body.replaceChildren(...versions.map((v) => {
      const isChampion = v.is_champion === true || v.version === champion;
      const aliases = (v.aliases || []).filter((a) => a !== "champion");
      // Only a version that served before can serve again.
      const canRollBack = !isChampion && !!v.served_at;
      return el("tr", { "data-version": v.version, class: isChampion ? "champion-row" : "" },
        el("td", {}, `v${v.version} `, isChampion ? badge("champion", "champion") : "", " ",
           aliases.map((a) => badge(a, a))),
        el("td", { class: "small" }, [v.origin, v.decision].filter(Boolean).join(" · ") || "—"),
        el("td", { class: "num" }, fmt.pct(v.validation_accuracy)),
        el("td", { class: "subtle small" }, fmt.date(v.created_at)),
        el("td", { class: "downloads" }, ...window.CLaaS.downloadLinks(v.downloads)),
        el("td", {}, canRollBack ? el("button", { class: "btn small rollback", "data-version": v.version,
                                                  onclick: () => rollback(v.version) }, "Roll back to this") : ""));
    }));
  }

  function renderUpdates(d) {
    const updates = [...(d.updates || [])].reverse();
    const body = document.querySelector("#updates-table tbody");
    if (!updates.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No updates yet.")));
      return;
    }
    body.replaceChildren(...updates.map((u) => {
      const compared = typeof u.champion_accuracy === "number" && typeof u.candidate_accuracy === "number";
      return el("tr", { "data-update": u.id, "data-status": u.status },
        el("td", {}, u.id),
        el("td", {}, badge(u.status), el("div", { class: "subtle small" }, u.trigger || "")),
        el("td", {}, u.candidate_version ? `v${u.candidate_version}` : "—",
           el("div", { class: "subtle small" }, u.n_samples ? `${u.n_samples} samples` : ""),
           el("div", { class: "subtle small epochs" }, epochsText(u.cost || {}))),
        el("td", { class: "small reason" }, u.reason || u.error || "—",
           compared ? el("div", { class: "subtle" },
             `validation: champion ${fmt.pct(u.champion_accuracy)} → candidate ${fmt.pct(u.candidate_accuracy)}`) : ""),
        el("td", { class: "subtle small" }, fmt.date(first(u.finished_at, u.started_at, u.created_at))));
    }));
  }

  /** How many epochs an update trained and why it stopped (from its cost; "" until it has trained). */
  function epochsText(cost) {
    if (typeof cost.epochs_trained !== "number") return "";
    const epochs = `${cost.epochs_trained} epoch${cost.epochs_trained === 1 ? "" : "s"}`;
    return cost.stopped && cost.stopped !== "max epochs" ? `${epochs}, stopped: ${cost.stopped}` : epochs;
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
    document.getElementById("s-detector").textContent = det.name
      ? `${det.name}${typeof det.p_val === "number" ? `, drift when p < ${det.p_val}` : ""}` : "";
    const updates = d.updates || [];
    document.getElementById("s-updates").textContent = updates.length;
    const promoted = updates.filter((u) => u.status === "promoted").length;
    document.getElementById("s-promoted").textContent = updates.length ? `${promoted} promoted` : "";
    const up = d.update || {};
    document.getElementById("s-policy").textContent = up.trigger
      ? `on ${up.trigger.replace(/_/g, " ")} by ${((up.strategy || {}).name) || "replay"}; ` +
        `${d.buffered_samples ?? 0} of ${up.min_samples} samples buffered` : "";
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
        renderChecks(d);
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
  let lastId = 0;
  socket(() => `/ws/deployments/${username}/${encodeURIComponent(name)}/?after=${lastId}`, {
    onMessage(event) {
      if (event.id <= lastId) return;
      lastId = event.id;
      load();
    },
    onOpen() { live.textContent = "● live"; live.style.color = "var(--ok)"; load(); },
    onClose() { live.textContent = "○ reconnecting…"; live.style.color = ""; },
    onRefused() { live.textContent = ""; },
  });
  load();
})();
