/* Live experiment page: stored events, then live ones, over ws/experiments/<user>/<name>/. */
(function () {
  "use strict";
  const { api, el, fmt, socket, palette, heatColor, username } = window.CLaaS;
  const root = document.getElementById("experiment");
  const name = root.dataset.name;
  const options = JSON.parse(document.getElementById("experiment-options").textContent);
  const ACTIVE = ["queued", "running"];
  const FINISHED = ["completed", "failed", "cancelled"];
  const q = encodeURIComponent(name);

  const state = {
    status: root.dataset.status,
    nExp: (options.benchmark || {}).n_experiences || 1,
    epochs: (options.training || {}).epochs || 1,
    lastId: 0,
    progress: Number(root.dataset.progress) || 0,
    experience: null, epoch: null,
    elapsed: null, eta: null, clockAt: null,  // elapsed/eta as of clockAt (ms since epoch)
    rows: [],  // accuracy rows, one per finished experience
  };
  let resultsRequest = null;  // one results fetch per run

  // --- charts ---------------------------------------------------------------------------------
  const percentAxis = { min: 0, max: 1, ticks: { callback: (v) => `${Math.round(v * 100)} %` } };
  const lossChart = new Chart(document.getElementById("loss-chart"), {
    type: "line",
    data: { datasets: [] },
    options: {
      parsing: false, normalized: true,
      scales: { x: { type: "linear", title: { display: true, text: "epoch (all experiences)" }, ticks: { precision: 0 } },
                y: { title: { display: true, text: "loss" }, beginAtZero: true } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      elements: { point: { radius: 0 } },
    },
  });
  const accChart = new Chart(document.getElementById("accuracy-chart"), {
    type: "line",
    data: { datasets: [] },
    options: {
      parsing: false,
      clip: false,  // points at 100 % stay whole
      layout: { padding: { top: 8 } },
      scales: { x: { type: "linear", min: 1, offset: true, title: { display: true, text: "after training on experience" },
                     ticks: { precision: 0, stepSize: 1 } },
                y: { ...percentAxis, title: { display: true, text: "accuracy" } } },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } },
                 tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmt.pct(c.parsed.y)}` } } },
    },
  });

  function lossSeries(i) {
    while (lossChart.data.datasets.length <= i) {
      const k = lossChart.data.datasets.length;
      lossChart.data.datasets.push({ label: `Experience ${k + 1}`, data: [], borderColor: palette[k % palette.length],
                                     backgroundColor: palette[k % palette.length], borderWidth: 2, tension: 0.2 });
    }
    return lossChart.data.datasets[i];
  }

  function rebuildAccuracy() {
    const n = Math.max(state.nExp, state.rows.length);
    const stream = { label: "Stream accuracy", data: [], borderColor: "#14213d", backgroundColor: "#14213d",
                     borderWidth: 3, pointRadius: 4 };
    const perExp = [];
    state.rows.forEach((row, i) => {
      if (!row) return;
      stream.data.push({ x: i + 1, y: row.stream_accuracy });
    });
    for (let j = 0; j < n; j++) {
      const data = [];
      state.rows.forEach((row, i) => { if (row && i >= j && j < row.accuracy_row.length) data.push({ x: i + 1, y: row.accuracy_row[j] }); });
      if (data.length) perExp.push({ label: `on exp. ${j + 1}`, data, borderColor: palette[(j + 1) % palette.length],
                                     backgroundColor: palette[(j + 1) % palette.length], borderWidth: 1.5,
                                     borderDash: [5, 3], pointRadius: 2 });
    }
    accChart.data.datasets = [stream, ...perExp];
    accChart.options.scales.x.max = Math.max(n, 2);
    // The loss axis spans the whole run from the start, so the curve also shows how far it is.
    lossChart.options.scales.x.min = 0;
    lossChart.options.scales.x.max = Math.max(state.nExp, 1) * state.epochs;
  }

  let flushPending = false;
  function scheduleFlush() {
    if (flushPending) return;
    flushPending = true;
    setTimeout(() => {
      flushPending = false;
      rebuildAccuracy();
      lossChart.update("none");
      accChart.update();
      const lossPoints = lossChart.data.datasets.reduce((s, d) => s + d.data.length, 0);
      document.getElementById("loss-box").dataset.points = lossPoints;
      document.getElementById("accuracy-box").dataset.points = state.rows.filter(Boolean).length;
      renderHeatmap();
    }, 60);
  }

  // --- heat map of the accuracy matrix -------------------------------------------------------------
  function renderHeatmap() {
    const box = document.getElementById("heatmap");
    const rows = state.rows;
    const done = rows.filter(Boolean).length;
    box.dataset.rows = done;
    if (!done) return;
    const cols = Math.max(...rows.filter(Boolean).map((r) => r.accuracy_row.length));
    const nRows = Math.max(state.nExp, rows.length);
    const head = el("tr", {}, el("th", {}, ""), [...Array(cols).keys()].map((j) => el("th", { scope: "col" }, `exp ${j + 1}`)));
    const body = [...Array(nRows).keys()].map((i) => el("tr", {},
      el("th", { scope: "row" }, `after ${i + 1}`),
      [...Array(cols).keys()].map((j) => {
        const v = rows[i] ? rows[i].accuracy_row[j] : undefined;
        // Cells right of the diagonal test experiences not trained yet; they are shown faded.
        const future = j > i ? ";opacity:.55" : "";
        return typeof v === "number"
          ? el("td", { style: `background:${heatColor(v)}${future}`, title: `trained up to ${i + 1}, tested on ${j + 1}: ${fmt.pct(v, 2)}` },
               Math.round(100 * v))
          : el("td", {}, "");
      })));
    box.replaceChildren(el("table", { class: "heatmap" }, el("thead", {}, head), el("tbody", {}, body),
      el("caption", {}, "Accuracy in percent: green is high, red is low.")));
  }

  // --- progress ------------------------------------------------------------------------------------
  function renderProgress() {
    const pct = Math.round(100 * Math.max(0, Math.min(1, state.progress)));
    const bar = document.getElementById("progress");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.querySelector(".bar").style.width = `${pct}%`;
    bar.classList.toggle("done", state.status === "completed");
    bar.classList.toggle("failed", state.status === "failed" || state.status === "cancelled");
    document.getElementById("p-percent").textContent = `${pct} %`;
    const n = state.nExp;
    document.getElementById("p-experience").textContent =
      state.experience === null ? `— of ${n}` : `${Math.min(state.experience + 1, n)} of ${n}`;
    document.getElementById("p-epoch").textContent =
      state.epoch === null ? `— of ${state.epochs}` : `${state.epoch} of ${state.epochs}`;
    tick();
  }

  function tick() {
    const running = state.status === "running";
    const since = running && state.clockAt ? Math.max(0, (Date.now() - state.clockAt) / 1000) : 0;
    document.getElementById("p-elapsed").textContent = state.elapsed === null ? "—" : fmt.duration(state.elapsed + since);
    let remaining = "—";
    if (state.status === "completed") remaining = fmt.duration(0);
    else if (running && typeof state.eta === "number") remaining = fmt.duration(Math.max(0, state.eta - since));
    document.getElementById("p-remaining").textContent = remaining;
  }
  setInterval(tick, 1000);

  function clock(event) {
    if (typeof event.elapsed_s === "number") {
      state.elapsed = event.elapsed_s;
      // Server time of the event, so a replayed history does not count as fresh.
      state.clockAt = Date.parse(event.time) || Date.now();
    }
    if ("eta_s" in event) state.eta = event.eta_s;
  }

  // --- status and actions ----------------------------------------------------------------------------
  function renderStatus() {
    const badge = document.getElementById("status-badge");
    badge.className = `badge ${state.status}`;
    badge.dataset.status = state.status;
    badge.textContent = state.status;
    root.dataset.status = state.status;
    const active = ACTIVE.includes(state.status);
    const run = document.getElementById("run-button");
    run.hidden = active;
    run.textContent = state.status === "ready" ? "Run" : "Run again";
    document.getElementById("cancel-button").hidden = !active;
    document.getElementById("delete-button").hidden = active;
  }

  function reset() {
    state.rows = [];
    state.progress = 0;
    state.experience = state.epoch = state.elapsed = state.eta = state.clockAt = null;
    lossChart.data.datasets = [];
    document.getElementById("heatmap").replaceChildren(el("p", { class: "empty" }, "Filled in as each experience ends."));
    document.getElementById("final-card").hidden = true;
    document.getElementById("final-card").dataset.loaded = "";
    resultsRequest = null;
    document.getElementById("error-box").hidden = true;
    document.getElementById("notes").hidden = true;
    scheduleFlush();
  }

  function note(text) {
    const box = document.getElementById("notes");
    box.textContent = text;
    box.hidden = false;
  }

  // --- events ------------------------------------------------------------------------------------------
  const handlers = {
    status(event) {
      // A queued event starts a run: anything shown from an earlier run is stale.
      if (event.status === "queued") reset();
      state.status = event.status;
      if (event.status === "failed" || event.error) {
        const box = document.getElementById("error-box");
        box.textContent = `The experiment failed: ${event.error || "no reason was given."}`;
        box.hidden = event.status !== "failed";
      }
      if (event.status === "completed") {
        state.progress = 1;
        loadResults();
      }
      if (event.status === "cancelled") note("The run was cancelled; “Run again” starts it from scratch.");
      renderStatus();
    },
    epoch_end(event) {
      state.nExp = event.n_experiences || state.nExp;
      state.epochs = event.epochs || state.epochs;
      state.experience = event.experience;
      state.epoch = event.epoch;
      state.progress = event.progress;
      if (state.status !== "running" && !FINISHED.includes(state.status)) { state.status = "running"; renderStatus(); }
      clock(event);
      lossSeries(event.experience).data.push({ x: event.experience * state.epochs + event.epoch, y: event.loss });
    },
    experience_end(event) {
      state.nExp = event.n_experiences || state.nExp;
      state.experience = event.experience;
      state.epoch = state.epochs;
      state.progress = event.progress;
      state.rows[event.experience] = event;
      clock(event);
    },
    resumed(event) {
      // A new attempt retrains from its checkpoint: later points of the lost attempt go.
      const from = event.from_experience || 0;
      state.rows.length = Math.min(state.rows.length, from);
      lossChart.data.datasets.forEach((d, i) => { if (i >= from) d.data = []; });
      note(`A worker stopped; attempt ${event.attempt || "?"} resumed from experience ${from + 1}'s checkpoint.`);
    },
    continued(event) {
      const what = event.state === "strategy" ? "its final model and strategy state (e.g. the replay memory)"
                                               : "its final model";
      note(`Continues experiment “${event.from_experiment || options.from_experiment || ""}” from ${what}.`);
    },
  };

  function onEvent(event) {
    if (event.id <= state.lastId) return;
    state.lastId = event.id;
    const handler = handlers[event.type];
    if (handler) handler(event);
    renderProgress();
    scheduleFlush();
  }

  // --- results -----------------------------------------------------------------------------------------
  function loadResults() {
    resultsRequest = resultsRequest || fetchResults();
    return resultsRequest;
  }

  async function fetchResults() {
    let results;
    try {
      results = await api("GET", `/base-scenario/${username}/results/${q}`);
    } catch (err) {
      resultsRequest = null;
      return;
    }
    const m = results.metrics || {};
    const cost = results.cost || {};
    document.getElementById("m-final_accuracy").textContent = fmt.pct(m.final_accuracy);
    document.getElementById("m-forgetting").textContent = fmt.num(m.forgetting);
    document.getElementById("m-bwt").textContent = fmt.signed(m.bwt);
    document.getElementById("m-fwt").textContent = fmt.signed(m.fwt);
    document.getElementById("m-train_time").textContent = fmt.seconds(cost.train_time_s);
    document.getElementById("m-samples").textContent = fmt.int(cost.samples_processed);
    const mlflow = results.mlflow || {};
    const link = document.getElementById("mlflow-link");
    if (mlflow.url) { link.href = mlflow.url; link.hidden = false; }
    const model = results.model || {};
    document.getElementById("download-model").hidden = !model.download_url;
    document.getElementById("registry-note").textContent = model.mlflow_uri
      ? `Registered in MLflow as ${model.mlflow_uri}. The download is a PyTorch state_dict: torch.load(path, weights_only=True).`
      : "The download is a PyTorch state_dict: torch.load(path, weights_only=True).";
    // Events may be gone (e.g. pruned); the stored matrix still fills the heat map and chart.
    (results.experiences || []).forEach((exp, i) => {
      if (!state.rows[i] && exp.accuracy_row) state.rows[i] = { accuracy_row: exp.accuracy_row, stream_accuracy: exp.stream_accuracy };
    });
    renderExperiences(results.experiences || []);
    document.getElementById("final-card").hidden = false;
    document.getElementById("final-card").dataset.loaded = "1";
    scheduleFlush();
  }

  function renderExperiences(experiences) {
    const table = document.getElementById("experiences-table");
    table.hidden = !experiences.length;
    table.querySelector("tbody").replaceChildren(...experiences.map((e) => el("tr", {},
      el("td", {}, e.index + 1), el("td", {}, (e.classes || []).join(", ")),
      el("td", { class: "num" }, fmt.int(e.train_samples)),
      el("td", { class: "num" }, fmt.seconds(e.train_time_s), el("div", { class: "subtle small epochs" }, epochsText(e))),
      el("td", { class: "num" }, fmt.pct(e.accuracy)))));
  }

  /** How many epochs an experience trained and why it stopped ("" for results stored before either was kept). */
  function epochsText(e) {
    if (typeof e.epochs_trained !== "number") return "";
    const epochs = `${e.epochs_trained} epoch${e.epochs_trained === 1 ? "" : "s"}`;
    return e.stopped && e.stopped !== "max epochs" ? `${epochs}, stopped: ${e.stopped}` : epochs;
  }

  function renderConfig() {
    const dl = document.getElementById("config");
    const model = options.model || {};
    const bench = options.benchmark || {};
    const strat = options.strategy || {};
    const training = options.training || {};
    const opt = training.optimizer || {};
    const params = (obj, skip = []) => Object.entries(obj || {}).filter(([k]) => !skip.includes(k))
      .map(([k, v]) => `${k}=${Array.isArray(v) ? `[${v.join(",")}]` : v}`).join(", ");
    const rows = [
      ["Model", model.registered ? `${model.registered} v${model.version} (${model.architecture})` : model.architecture],
      ["Model parameters", params(model.params)],
      ["Benchmark", `${bench.name} (${params(bench, ["name"])})`],
      ["Strategy", strat.name + (Object.keys(strat.params || {}).length ? ` (${params(strat.params)})` : "")],
      ["Training", `${training.epochs} epochs, minibatch ${training.train_mb_size}, device ${training.device}, seed ${training.seed}`],
      ["Optimizer", `${opt.name} (${params(opt, ["name"])})`],
    ];
    if (options.from_experiment) rows.push(["Continues", options.from_experiment]);
    dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "—")]));
  }

  // --- buttons -----------------------------------------------------------------------------------------
  function guard(button, fn) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await fn(); } catch (err) {
        const box = document.getElementById("error-box");
        box.textContent = err.message;
        box.hidden = false;
      } finally { button.disabled = false; }
    });
  }
  guard(document.getElementById("run-button"), async () => {
    await api("POST", `/base-scenario/${username}/exec/${q}`);
  });
  guard(document.getElementById("cancel-button"), async () => {
    await api("POST", `/api/experiments/${q}/cancel`);
    note("Cancelling: the run stops at its next minibatch.");
  });
  guard(document.getElementById("delete-button"), async () => {
    if (!confirm(`Delete experiment “${name}” with its results and model? This cannot be undone.`)) return;
    await api("DELETE", `/api/experiments/${q}`);
    location.href = "/";
  });

  // --- start -------------------------------------------------------------------------------------------
  renderConfig();
  renderStatus();
  renderProgress();
  const live = document.getElementById("live-indicator");
  socket(() => `/ws/experiments/${username}/${q}/?after=${state.lastId}`, {
    onMessage: onEvent,
    onOpen() { live.textContent = "● live"; live.style.color = "var(--ok)"; root.dataset.socket = "open"; },
    onClose() { live.textContent = "○ reconnecting…"; live.style.color = ""; root.dataset.socket = "closed"; },
    onRefused() { live.textContent = "live updates refused"; },
  });
  // An experiment with no stored events (e.g. finished before events were kept) still shows results.
  if (state.status === "completed") loadResults();
})();
