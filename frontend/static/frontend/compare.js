/* Compare page: final accuracy against cost, and accuracy-per-experience curves. */
(function () {
  "use strict";
  const { api, el, fmt, palette, username } = window.CLaaS;
  const DEFAULT_SELECTION = 5;
  const results = new Map();  // name -> results document
  const colors = new Map();   // name -> colour, stable while the page lives
  let selected = JSON.parse(document.getElementById("selected").textContent);

  const costLabels = { train_time_s: "training time (s)", samples_processed: "samples processed" };
  const scatter = new Chart(document.getElementById("scatter-chart"), {
    type: "scatter",
    data: { datasets: [] },
    options: {
      scales: {
        x: { title: { display: true, text: costLabels.train_time_s }, beginAtZero: true },
        y: { min: 0, max: 1, title: { display: true, text: "final accuracy" },
             ticks: { callback: (v) => `${Math.round(v * 100)} %` } },
      },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 10 } },
        tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmt.pct(c.parsed.y)} at ${fmt.num(c.parsed.x, 2)}` } },
      },
      elements: { point: { radius: 7, hoverRadius: 9 } },
    },
  });
  const curves = new Chart(document.getElementById("curves-chart"), {
    type: "line",
    data: { datasets: [] },
    options: {
      parsing: false,
      scales: {
        x: { type: "linear", min: 1, offset: true, ticks: { precision: 0, stepSize: 1 },
             title: { display: true, text: "after training on experience" } },
        y: { min: 0, max: 1, title: { display: true, text: "stream accuracy" },
             ticks: { callback: (v) => `${Math.round(v * 100)} %` } },
      },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 10 } } },
    },
  });

  function color(name) {
    if (!colors.has(name)) colors.set(name, palette[colors.size % palette.length]);
    return colors.get(name);
  }

  async function ensureResults(name) {
    if (!results.has(name)) {
      results.set(name, await api("GET", `/base-scenario/${username}/results/${encodeURIComponent(name)}`));
    }
    return results.get(name);
  }

  async function render() {
    const axis = document.getElementById("cost-axis").value;
    const docs = (await Promise.all(selected.map((n) => ensureResults(n).catch(() => null)))).filter(Boolean);
    scatter.options.scales.x.title.text = costLabels[axis];
    scatter.data.datasets = docs.map((r) => ({
      label: `${r.exp_name} (${r.config.strategy.name})`,
      data: [{ x: (r.cost || {})[axis] || 0, y: (r.metrics || {}).final_accuracy || 0 }],
      backgroundColor: color(r.exp_name), borderColor: color(r.exp_name),
    }));
    curves.data.datasets = docs.map((r) => ({
      label: r.exp_name,
      data: (r.experiences || []).map((e, i) => ({ x: i + 1, y: e.stream_accuracy })),
      borderColor: color(r.exp_name), backgroundColor: color(r.exp_name), borderWidth: 2, pointRadius: 3,
    }));
    const longest = Math.max(2, ...docs.map((r) => (r.experiences || []).length));
    curves.options.scales.x.max = longest;
    scatter.update();
    curves.update();
    document.getElementById("scatter-box").dataset.points = docs.length;
    document.getElementById("curves-box").dataset.series = docs.length;
    renderTable(docs);
    const query = selected.map((n) => "exp=" + encodeURIComponent(n)).join("&");
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
  }

  function renderTable(docs) {
    const body = document.querySelector("#compare-table tbody");
    if (!docs.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "Tick experiments above.")));
      return;
    }
    const best = Math.max(...docs.map((r) => (r.metrics || {}).final_accuracy ?? -1));
    body.replaceChildren(...docs.map((r) => {
      const m = r.metrics || {}, c = r.cost || {};
      return el("tr", { "data-exp": r.exp_name },
        el("td", {}, el("span", { class: "swatch", style: `background:${color(r.exp_name)}` }),
           el("a", { href: `/experiments/${encodeURIComponent(r.exp_name)}/` }, r.exp_name)),
        el("td", {}, r.config.strategy.name), el("td", {}, r.config.benchmark.name),
        el("td", { class: "num", style: m.final_accuracy === best ? "font-weight:700" : "" }, fmt.pct(m.final_accuracy)),
        el("td", { class: "num" }, fmt.num(m.forgetting)), el("td", { class: "num" }, fmt.signed(m.bwt)),
        el("td", { class: "num" }, fmt.signed(m.fwt)), el("td", { class: "num" }, fmt.seconds(c.train_time_s)),
        el("td", { class: "num" }, fmt.int(c.samples_processed)));
    }));
  }

  async function init() {
    const experiments = (await api("GET", "/api/experiments/")).filter((e) => e.status === "completed");
    const names = new Set(experiments.map((e) => e.exp_name));
    selected = selected.filter((n) => names.has(n));
    if (!selected.length) selected = experiments.slice(0, DEFAULT_SELECTION).map((e) => e.exp_name);
    const picker = document.getElementById("picker");
    if (!experiments.length) {
      picker.replaceChildren(el("p", { class: "empty" }, "No completed experiments yet."));
    } else {
      picker.replaceChildren(...experiments.map((e) => el("div", { class: "field inline pick" },
        el("input", { type: "checkbox", id: `pick-${e.exp_name}`, value: e.exp_name, checked: selected.includes(e.exp_name),
                      onchange: (ev) => {
                        selected = ev.target.checked ? [...selected, e.exp_name] : selected.filter((n) => n !== e.exp_name);
                        render();
                      } }),
        el("label", { for: `pick-${e.exp_name}` }, e.exp_name, " ",
           el("span", { class: "subtle" }, `${e.options.strategy.name} · ${e.options.benchmark.name}`)))));
    }
    document.getElementById("cost-axis").addEventListener("change", render);
    await render();
    document.body.dataset.ready = "1";
  }

  init().catch((err) => window.CLaaS.flash(err.message));
})();
