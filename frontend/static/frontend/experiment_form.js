/* Experiment setup form, generated from the registries (/api/architectures/, /api/benchmarks/,
   /api/strategies/, /api/optimizers/); validation is the server's, shown next to each field. */
(function () {
  "use strict";
  const { api, el, username } = window.CLaaS;
  const form = document.getElementById("setup-form");
  const trainingParams = JSON.parse(document.getElementById("training-params").textContent);
  // The model's input shape and class count follow the benchmark unless the user sets them.
  const SHAPE_PARAMS = new Set(["input_shape", "num_classes"]);
  const registries = {};

  const { renderParams, readValue, collectParams } = window.CLaaS.forms;

  // --- registry selects ------------------------------------------------------------------------
  function fillSelect(select, entries, selected) {
    select.replaceChildren(...entries.map((e) => el("option", { value: e.name, selected: e.name === selected }, e.name)));
  }

  function entry(kind, name) { return registries[kind].find((e) => e.name === name); }

  function showArchitecture(values) {
    const arch = entry("architectures", document.getElementById("f-architecture").value);
    document.getElementById("architecture-help").textContent = arch.help || "";
    renderParams(document.getElementById("model-params"), arch.params.filter((p) => !SHAPE_PARAMS.has(p.name)),
                 "model.params", values);
    // Shape fields start empty: the server fills them from the chosen benchmark.
    const shape = arch.params.filter((p) => SHAPE_PARAMS.has(p.name)).map((p) => ({ ...p, default: null }));
    renderParams(document.getElementById("model-shape-params"), shape, "model.params", values);
  }

  async function showBenchmark(values) {
    const bench = entry("benchmarks", document.getElementById("f-benchmark").value);
    document.getElementById("benchmark-help").textContent = bench.help || "";
    const container = document.getElementById("benchmark-params");
    renderParams(container, bench.params, "benchmark", values);
    // An uploaded dataset is picked from the user's own list.
    const datasetInput = container.querySelector('[data-path="benchmark.dataset"]');
    if (datasetInput) {
      const datasets = await api("GET", "/api/datasets/").catch(() => []);
      const select = el("select", { id: datasetInput.id, "data-path": "benchmark.dataset", "data-type": "str" },
        el("option", { value: "" }, datasets.length ? "— choose a dataset —" : "— upload one through /api/datasets/ —"),
        datasets.map((d) => el("option", { value: d.name, selected: d.name === datasetInput.value },
                                 `${d.name} (${d.n_samples} rows, ${d.n_features} features)`)));
      datasetInput.replaceWith(select);
    }
  }

  function showStrategy(values) {
    const strat = entry("strategies", document.getElementById("f-strategy").value);
    document.getElementById("strategy-help").textContent = strat.help || "";
    const container = document.getElementById("strategy-params");
    renderParams(container, strat.params, "strategy.params", values);
    if (!strat.params.length) container.append(el("p", { class: "subtle" }, "This strategy has no parameters."));
  }

  function showOptimizer(values) {
    const opt = entry("optimizers", document.getElementById("f-optimizer").value);
    renderParams(document.getElementById("optimizer-params"), opt.params, "training.optimizer", values);
  }

  function showSource() {
    const source = document.getElementById("f-model-source").value;
    for (const block of form.querySelectorAll("[data-source]")) block.hidden = block.dataset.source !== source;
  }

  // --- the request body --------------------------------------------------------------------------
  function body() {
    const source = document.getElementById("f-model-source").value;
    const out = { exp_name: document.getElementById("f-exp_name").value.trim() };
    if (source === "zoo") {
      const params = { ...collectParams(document.getElementById("model-params")) };
      for (const [k, v] of Object.entries(collectParams(document.getElementById("model-shape-params")))) {
        if (v !== null) params[k] = v;
      }
      out.model = { architecture: document.getElementById("f-architecture").value, params };
    } else if (source === "registered") {
      out.model = { registered: document.getElementById("f-registered").value };
      const version = readValue(document.getElementById("f-version"));
      if (version !== null) out.model.version = version;
    } else {
      out.from_experiment = document.getElementById("f-from").value || null;
    }
    out.benchmark = { name: document.getElementById("f-benchmark").value,
                      ...collectParams(document.getElementById("benchmark-params")) };
    out.strategy = { name: document.getElementById("f-strategy").value,
                     params: collectParams(document.getElementById("strategy-params")) };
    const training = collectParams(document.getElementById("training-fields"));
    training.optimizer = { name: document.getElementById("f-optimizer").value,
                           ...collectParams(document.getElementById("optimizer-params")) };
    out.training = training;
    if (document.getElementById("f-overwrite").checked) out.overwrite = true;
    return out;
  }

  const clearErrors = () => window.CLaaS.forms.clearErrors(form);
  const showError = (err) => window.CLaaS.forms.showError(form, err,
    "The experiment was not saved: please correct the highlighted field.");

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const action = (e.submitter && e.submitter.dataset.action) || "run";
    clearErrors();
    const buttons = form.querySelectorAll(".form-actions button");
    buttons.forEach((b) => (b.disabled = true));
    document.getElementById("form-busy").hidden = false;
    try {
      const payload = body();
      const created = await api("POST", "/base-scenario/setup/", payload);
      const name = created.exp_name;
      if (action === "run") await api("POST", `/base-scenario/${username}/exec/${encodeURIComponent(name)}`);
      location.href = `/experiments/${encodeURIComponent(name)}/`;
    } catch (err) {
      showError(err);
      buttons.forEach((b) => (b.disabled = false));
      document.getElementById("form-busy").hidden = true;
    }
  });

  // --- start --------------------------------------------------------------------------------------
  async function init() {
    const [architectures, benchmarks, strategies, optimizers, experiments, models] = await Promise.all([
      api("GET", "/api/architectures/"), api("GET", "/api/benchmarks/"), api("GET", "/api/strategies/"),
      api("GET", "/api/optimizers/"), api("GET", "/api/experiments/").catch(() => []),
      api("GET", "/api/models/").catch(() => []),
    ]);
    Object.assign(registries, { architectures, benchmarks, strategies, optimizers });

    // Copy the options of an existing experiment (?from=<name>), else the registry defaults.
    let opts = {};
    const copyFrom = form.dataset.copyFrom;
    if (copyFrom) {
      const source = experiments.find((x) => x.exp_name === copyFrom);
      if (source) {
        opts = source.options || {};
        document.getElementById("f-exp_name").value = `${copyFrom}-copy`;
      }
    }
    const model = opts.model || {};
    const bench = opts.benchmark || {};
    const strat = opts.strategy || {};
    const training = opts.training || {};
    const optimizer = training.optimizer || {};

    fillSelect(document.getElementById("f-architecture"), architectures, model.architecture || "simple_mlp");
    fillSelect(document.getElementById("f-benchmark"), benchmarks, bench.name || "split_digits");
    fillSelect(document.getElementById("f-strategy"), strategies, strat.name || "replay");
    fillSelect(document.getElementById("f-optimizer"), optimizers, optimizer.name || "sgd");
    fillSelect(document.getElementById("f-registered"), models, model.registered);
    if (!models.length) document.getElementById("f-registered").append(el("option", { value: "" }, "— no registered models —"));
    const done = experiments.filter((x) => x.status === "completed");
    fillSelect(document.getElementById("f-from"), done.map((x) => ({ name: x.exp_name })), opts.from_experiment);
    if (!done.length) document.getElementById("f-from").append(el("option", { value: "" }, "— no completed experiments —"));
    if (model.version) document.getElementById("f-version").value = model.version;
    // ?registered=<name> starts from a registered model (the models page links here).
    const registered = form.dataset.registered;
    if (registered && models.some((m) => m.name === registered)) {
      document.getElementById("f-registered").value = registered;
      model.registered = registered;
    }
    document.getElementById("f-model-source").value =
      opts.from_experiment ? "experiment" : model.registered ? "registered" : "zoo";

    // The copied shape is kept only when it was set explicitly; otherwise it follows the benchmark.
    showArchitecture(model.registered ? {} : Object.fromEntries(
      Object.entries(model.params || {}).filter(([k]) => !SHAPE_PARAMS.has(k))));
    await showBenchmark(bench);
    showStrategy(strat.params);
    renderParams(document.getElementById("training-fields"), trainingParams, "training", training);
    showOptimizer(optimizer);
    showSource();

    document.getElementById("f-architecture").addEventListener("change", () => showArchitecture());
    document.getElementById("f-benchmark").addEventListener("change", () => showBenchmark());
    document.getElementById("f-strategy").addEventListener("change", () => showStrategy());
    document.getElementById("f-optimizer").addEventListener("change", () => showOptimizer());
    document.getElementById("f-model-source").addEventListener("change", showSource);
    form.dataset.ready = "1";
  }

  init().catch((err) => {
    const box = document.getElementById("form-error");
    box.textContent = `The form could not be built: ${err.message}`;
    box.hidden = false;
  });
})();
