/* Models page: the user's registered models, and a form to register one. */
(function () {
  "use strict";
  const { api, el, fmt, forms } = window.CLaaS;
  const form = document.getElementById("register-form");
  let architectures = [];

  const paramText = (params) => Object.entries(params || {})
    .map(([k, v]) => `${k}=${Array.isArray(v) ? `[${v.join(",")}]` : v}`).join(", ");

  async function loadModels() {
    const body = document.querySelector("#models-table tbody");
    try {
      const models = await api("GET", "/api/models/");
      if (!models.length) {
        body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No registered models yet: register one below.")));
        return;
      }
      body.replaceChildren(...models.map((m) => el("tr", { "data-model": m.name },
        el("td", {}, el("a", { href: `/models/${encodeURIComponent(m.name)}/` }, m.name)),
        el("td", {}, m.architecture),
        el("td", { class: "small subtle" }, paramText(m.params)),
        el("td", { class: "num" }, (m.versions || []).length),
        el("td", { class: "num" }, m.latest_version ? `v${m.latest_version}` : "—"),
        el("td", { class: "mono small" }, m.mlflow_name || "—"),
        el("td", { class: "subtle" }, fmt.date(m.created_at)))));
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "empty" }, err.message)));
    }
  }

  // The empty choice: an uploaded torch.export program, which carries its own architecture.
  const PROGRAM = { name: "", help: "Your own model: upload a torch.export program (.pt2) as the file below; " +
    "input shape and classes are read from it.", params: [] };

  function showArchitecture() {
    const chosen = document.getElementById("r-architecture").value;
    const arch = chosen ? architectures.find((a) => a.name === chosen) : PROGRAM;
    document.getElementById("r-architecture-help").textContent = arch.help || "";
    forms.renderParams(document.getElementById("r-params"), arch.params, "params");
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    forms.clearErrors(form);
    const data = new FormData();
    data.append("name", document.getElementById("r-name").value.trim());
    const architecture = document.getElementById("r-architecture").value;
    if (architecture) {
      data.append("architecture", architecture);
      const params = Object.fromEntries(Object.entries(forms.collectParams(document.getElementById("r-params")))
        .filter(([, v]) => v !== null));
      data.append("params", JSON.stringify(params));
    }
    data.append("description", document.getElementById("r-description").value);
    data.append("seed", document.getElementById("r-seed").value || "0");
    const file = document.getElementById("r-file").files[0];
    if (file) data.append("file", file);
    try {
      const created = await api("POST", "/api/models/", data);
      location.href = `/models/${encodeURIComponent(created.name)}/`;
    } catch (err) {
      forms.showError(form, err, "The model was not registered: please correct the highlighted field.");
    }
  });

  async function init() {
    architectures = await api("GET", "/api/architectures/");
    const select = document.getElementById("r-architecture");
    select.replaceChildren(...architectures.map((a) => el("option", { value: a.name }, a.name)),
      el("option", { value: "" }, "my own model (torch.export program, .pt2)"));
    select.addEventListener("change", showArchitecture);
    showArchitecture();
    form.dataset.ready = "1";
  }

  loadModels();
  init().catch((err) => window.CLaaS.flash(err.message));
})();
