/* Deployments page: the user's deployments and a form to deploy a model. */
(function () {
  "use strict";
  const { api, el, fmt, forms, badge } = window.CLaaS;
  const form = document.getElementById("deploy-form");
  let strategies = [];

  const championOf = (d) => d.champion_version ?? (d.champion || {}).version ?? null;
  function sourceText(src) {
    if (!src) return "—";
    if (src.exp_name) return `experiment ${src.exp_name}`;
    if (src.registered) return `${src.registered} v${src.version ?? "latest"}`;
    return JSON.stringify(src);
  }

  async function loadDeployments() {
    const body = document.querySelector("#deployments-table tbody");
    try {
      const deployments = await api("GET", "/api/deployments/");
      if (!deployments.length) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No deployments yet: deploy a model below.")));
        return;
      }
      body.replaceChildren(...deployments.map((d) => {
        const checks = d.drift_checks || [];
        const last = d.last_drift_check || checks[checks.length - 1];
        const champion = championOf(d);
        return el("tr", { "data-deployment": d.name },
          el("td", {}, el("a", { href: `/deployments/${encodeURIComponent(d.name)}/` }, d.name)),
          el("td", {}, sourceText(d.source)),
          el("td", {}, champion ? badge("champion", `v${champion}`) : "—"),
          el("td", {}, d.detector ? `${d.detector.name} (p < ${d.detector.p_val})` : "—"),
          el("td", { class: "num" }, d.n_drift_checks ?? checks.length),
          el("td", {}, last ? [last.is_drift ? badge("drift", "drift") : badge("ok", "no drift"), " ",
                               el("span", { class: "subtle small" }, fmt.date(last.created_at))] : "—"),
          el("td", { class: "subtle" }, fmt.date(d.created_at)));
      }));
    } catch (err) {
      const text = err.status === 404 ? "Deployments are not available on this server." : err.message;
      body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, text)));
    }
  }

  function showSource() {
    const kind = document.getElementById("d-source-kind").value;
    for (const block of form.querySelectorAll("[data-source]")) block.hidden = block.dataset.source !== kind;
  }

  function showStrategy() {
    const strat = strategies.find((s) => s.name === document.getElementById("d-strategy").value);
    forms.renderParams(document.getElementById("d-strategy-params"), strat ? strat.params : [], "update.strategy.params");
  }

  function number(id) {
    const v = forms.readValue(document.getElementById(id));
    return v;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    forms.clearErrors(form);
    const kind = document.getElementById("d-source-kind").value;
    const source = kind === "experiment"
      ? { exp_name: document.getElementById("d-exp").value }
      : { registered: document.getElementById("d-registered").value };
    if (kind === "registered" && document.getElementById("d-version").value) source.version = number("d-version");
    const body = {
      name: document.getElementById("d-name").value.trim(),
      source,
      detector: { name: document.getElementById("d-detector").value, p_val: number("d-p_val") },
      update: {
        trigger: document.getElementById("d-trigger").value,
        strategy: { name: document.getElementById("d-strategy").value,
                    params: forms.collectParams(document.getElementById("d-strategy-params")) },
        min_samples: number("d-min_samples"),
        tolerance: number("d-tolerance"),
      },
    };
    try {
      const created = await api("POST", "/api/deployments/", body);
      location.href = `/deployments/${encodeURIComponent(created.name)}/`;
    } catch (err) {
      forms.showError(form, err, "The model was not deployed: please correct the highlighted field.");
    }
  });

  async function init() {
    for (const id of ["d-p_val", "d-min_samples", "d-tolerance", "d-version"]) {
      document.getElementById(id).dataset.type = id === "d-min_samples" || id === "d-version" ? "int" : "float";
    }
    const [experiments, models, strats, detectors] = await Promise.all([
      api("GET", "/api/experiments/"), api("GET", "/api/models/").catch(() => []),
      api("GET", "/api/strategies/"), api("GET", "/api/detectors/").catch(() => null),
    ]);
    strategies = strats.filter((s) => !s.offline);
    const done = experiments.filter((x) => x.status === "completed");
    document.getElementById("d-exp").replaceChildren(...(done.length
      ? done.map((x) => el("option", { value: x.exp_name }, `${x.exp_name} (${x.options.strategy.name})`))
      : [el("option", { value: "" }, "— no completed experiments —")]));
    document.getElementById("d-registered").replaceChildren(...(models.length
      ? models.map((m) => el("option", { value: m.name }, m.name))
      : [el("option", { value: "" }, "— no registered models —")]));
    if (Array.isArray(detectors) && detectors.length) {
      const select = document.getElementById("d-detector");
      select.replaceChildren(...detectors.map((d) => el("option", { value: d.name }, d.name)));
      const help = () => {
        const d = detectors.find((x) => x.name === select.value);
        document.getElementById("d-detector-help").textContent = d ? d.help || "" : "";
      };
      select.addEventListener("change", help);
      help();
    }
    const strategySelect = document.getElementById("d-strategy");
    strategySelect.replaceChildren(...strategies.map((s) => el("option", { value: s.name, selected: s.name === "replay" }, s.name)));
    strategySelect.addEventListener("change", showStrategy);
    document.getElementById("d-source-kind").addEventListener("change", showSource);
    showStrategy();
    form.dataset.ready = "1";
  }

  loadDeployments();
  init().catch((err) => window.CLaaS.flash(err.message));
})();
