/* One registered model: details, versions with downloads, upload of new weights. */
(function () {
  "use strict";
  const { api, el, fmt, forms, badge } = window.CLaaS;
  const name = document.getElementById("model").dataset.name;
  const path = `/api/models/${encodeURIComponent(name)}`;
  const form = document.getElementById("upload-form");

  function render(model) {
    document.getElementById("model-architecture").textContent = model.architecture;
    const params = Object.entries(model.params || {})
      .map(([k, v]) => `${k}=${Array.isArray(v) ? `[${v.join(",")}]` : v}`).join(", ");
    document.getElementById("model-info").replaceChildren(...[
      ["Architecture", model.architecture], ["Parameters", params], ["Description", model.description || "—"],
      ["MLflow name", model.mlflow_name || "—"], ["Created", fmt.date(model.created_at)],
    ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const versions = [...(model.versions || [])].sort((a, b) => b.version - a.version);
    const body = document.querySelector("#versions-table tbody");
    if (!versions.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No versions.")));
      return;
    }
    body.replaceChildren(...versions.map((v) => el("tr", { "data-version": v.version },
      el("td", {}, `v${v.version} `, v.version === model.latest_version ? badge("ok", "latest") : ""),
      el("td", {}, v.source_format),
      el("td", { class: "num" }, fmt.bytes(v.size_bytes)),
      el("td", { class: "mono small", title: v.sha256 }, (v.sha256 || "").slice(0, 12)),
      el("td", {}, v.note || ""),
      el("td", { class: "small" }, v.mlflow_version ? `v${v.mlflow_version}` : "—"),
      el("td", { class: "subtle" }, fmt.date(v.created_at)),
      el("td", {}, ...window.CLaaS.downloadLinks(v.downloads)))));
  }

  async function load() {
    try {
      render(await api("GET", path));
      document.getElementById("model").dataset.ready = "1";
    } catch (err) {
      window.CLaaS.flash(err.message);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    forms.clearErrors(form);
    const data = new FormData();
    const file = document.getElementById("u-file").files[0];
    if (file) data.append("file", file);
    data.append("note", document.getElementById("u-note").value);
    try {
      await api("POST", `${path}/versions/`, data);
      form.reset();
      await load();
    } catch (err) {
      forms.showError(form, err, "The weights were not stored: please correct the highlighted field.");
    }
  });

  document.getElementById("delete-model").addEventListener("click", async () => {
    if (!confirm(`Delete model “${name}” and all its versions?`)) return;
    try {
      await api("DELETE", path);
      location.href = "/models/";
    } catch (err) {
      window.CLaaS.flash(err.message);
    }
  });

  load();
})();
