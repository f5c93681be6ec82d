/* Deployments page: the user's deployments and a form to deploy a model, built from the
   detector and strategy registries. */
(function () {
  "use strict";
  const { api, el, fmt, forms, badge } = window.CLaaS;
  const form = document.getElementById("deploy-form");
  let strategies = [];
  let detectors = [];
  const $ = (id) => document.getElementById(id);

  function sourceText(src) {
    if (!src) return "—";
    if (src.exp_name) return `experiment ${src.exp_name}`;
    if (src.registered) return `${src.registered} v${src.version ?? "latest"}`;
    return "—";
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
        const last = d.last_drift_check;
        return el("tr", { "data-deployment": d.name },
          el("td", {}, el("a", { href: `/deployments/${encodeURIComponent(d.name)}/` }, d.name)),
          el("td", {}, sourceText(d.source)),
          el("td", {}, d.champion_version ? badge("champion", `v${d.champion_version}`) : "—"),
          el("td", {}, d.detector ? d.detector.name : "—"),
          el("td", { class: "num" }, d.n_drift_checks ?? "—"),
          el("td", {}, last ? [last.is_drift ? badge("drift", "drift") : badge("ok", "no drift"), " ",
                               el("span", { class: "subtle small" }, fmt.date(last.created_at))] : "—"),
          el("td", { class: "subtle" }, fmt.date(d.created_at)));
      }));
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, err.message)));
    }
  }

  function showSource() {
    const kind = $("d-source-kind").value;
    for (const block of form.querySelectorAll("[data-source]")) block.hidden = block.dataset.source !== kind;
  }

  function showDetector() {
    const det = detectors.find((d) => d.name === $("d-detector").value);
    $("d-detector-help").textContent = det ? det.help || "" : "";
    forms.renderParams($("d-detector-params"), det ? det.params : [], "detector");
  }

  function showStrategy() {
    const strat = strategies.find((s) => s.name === $("d-strategy").value);
    // Left empty, a parameter takes the deployment's default (e.g. mem_size follows memory_size).
    const params = (strat ? strat.params : []).map((p) => ({ ...p, default: null, placeholder: String(p.default) }));
    forms.renderParams($("d-strategy-params"), params, "update.strategy.params");
  }

  const given = (obj) => Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== null && v !== ""));

  function body() {
    const kind = $("d-source-kind").value;
    const source = kind === "experiment" ? { exp_name: $("d-exp").value }
      : given({ registered: $("d-registered").value, version: forms.readValue($("d-version")),
                reference: $("d-reference").value });
    const detector = { name: $("d-detector").value, ...forms.collectParams($("d-detector-params")) };
    if ($("d-preprocess").value) detector.preprocess = { name: $("d-preprocess").value };
    const update = given({
      trigger: $("d-trigger").value,
      min_samples: forms.readValue($("d-min_samples")),
      tolerance: forms.readValue($("d-tolerance")),
      every_n_samples: $("d-trigger").value === "every_n_samples" ? forms.readValue($("d-every")) : null,
    });
    update.strategy = { name: $("d-strategy").value, params: given(forms.collectParams($("d-strategy-params"))) };
    const training = given(forms.collectParams($("d-training-params")));
    if (Object.keys(training).length) update.training = training;
    return { name: $("d-name").value.trim(), source, detector, update };
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    forms.clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const created = await api("POST", "/api/deployments/", body());
      location.href = `/deployments/${encodeURIComponent(created.name)}/`;
    } catch (err) {
      forms.showError(form, err, "The model was not deployed: please correct the highlighted field.");
      button.disabled = false;
    }
  });

  const options = (items, empty) => (items.length ? items : [el("option", { value: "" }, empty)]);

  async function init() {
    const [experiments, models, strats, dets, datasets] = await Promise.all([
      api("GET", "/api/experiments/"), api("GET", "/api/models/").catch(() => []),
      api("GET", "/api/strategies/"), api("GET", "/api/detectors/"), api("GET", "/api/datasets/").catch(() => []),
    ]);
    strategies = strats.filter((s) => !s.offline);
    detectors = dets;
    const done = experiments.filter((x) => x.status === "completed");
    $("d-exp").replaceChildren(...options(done.map((x) =>
      el("option", { value: x.exp_name }, `${x.exp_name} (${x.options.strategy.name})`)), "— no completed experiments —"));
    $("d-registered").replaceChildren(...options(models.map((m) => el("option", { value: m.name }, m.name)),
                                                 "— no registered models —"));
    $("d-reference").replaceChildren(...options(datasets.map((d) =>
      el("option", { value: d.name }, `${d.name} (${d.n_samples} rows)`)), "— upload one through /api/datasets/ —"));
    $("d-detector").replaceChildren(...detectors.map((d) =>
      el("option", { value: d.name, selected: d.name === "mmd" }, `${d.name} (${d.kind})`)));
    const preprocess = (detectors[0] || {}).preprocess || [];
    $("d-preprocess").append(...preprocess.map((p) => el("option", { value: p.name, title: p.help || "" }, p.name)));
    $("d-strategy").replaceChildren(...strategies.map((s) => el("option", { value: s.name, selected: s.name === "replay" }, s.name)));
    $("d-detector").addEventListener("change", showDetector);
    $("d-strategy").addEventListener("change", showStrategy);
    $("d-source-kind").addEventListener("change", showSource);
    $("d-trigger").addEventListener("change", () => { $("d-every-field").hidden = $("d-trigger").value !== "every_n_samples"; });
    // Left empty, an update trains with the server's defaults.
    const trainingParams = JSON.parse($("training-params").textContent)
      .map((p) => ({ ...p, default: null, placeholder: String(p.default) }));
    forms.renderParams($("d-training-params"), trainingParams, "update.training");
    showDetector();
    showStrategy();
    showSource();
    form.dataset.ready = "1";
  }

  loadDeployments();
  init().catch((err) => window.CLaaS.flash(err.message));
})();
