"""The GUI in a real browser (Debian's chromium) against a live server with a real worker."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from playwright.sync_api import Browser, Page, expect, sync_playwright

from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split
from modelfactory.architectures import architecture_build
from tests.service import ROOT

SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
# Long enough a run to watch: 5 experiences of EPOCHS epochs on a wide MLP.
EPOCHS = 40
RUN_TIMEOUT_S = 600
# Waits cover a worker busy with a whole run on a shared machine; nothing here measures speed.
expect.set_options(timeout=120_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gina(service):
    return service.user("gina")


@pytest.fixture
def page(browser: Browser, service, gina) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True,
                                  base_url=service.base_url)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto("/accounts/login/")
    page.fill("#id_username", gina.username)
    page.fill("#id_password", gina.password)
    page.click("button[type=submit]")
    expect(page).to_have_url(service.base_url + "/")
    yield page
    context.close()


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def live_state(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => ({
        status: document.getElementById('experiment').dataset.status,
        progress: Number(document.getElementById('progress').getAttribute('aria-valuenow')),
        accuracy_points: Number(document.getElementById('accuracy-box').dataset.points),
        loss_points: Number(document.getElementById('loss-box').dataset.points),
        heatmap_rows: Number(document.getElementById('heatmap').dataset.rows),
        epoch: document.getElementById('p-epoch').textContent,
    })""")


# Every state the page shows, in order: a snapshot each time the progress bar or the accuracy chart
# changes. A poll every 0.2 s can miss most of a run that a fast machine finishes in seconds.
RECORD_LIVE = """
window.__liveSeen = [];
new MutationObserver(() => {
  const root = document.getElementById('experiment');
  const bar = document.getElementById('progress');
  const acc = document.getElementById('accuracy-box');
  if (!root || !bar || !acc) return;
  window.__liveSeen.push({status: root.dataset.status, progress: Number(bar.getAttribute('aria-valuenow')),
                          accuracy_points: Number(acc.dataset.points),
                          epoch: document.getElementById('p-epoch').textContent});
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['aria-valuenow', 'data-points']});
"""


def wait_live(page: Page, predicate, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = live_state(page)
        if predicate(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"the live page did not reach the expected state (last: {state})")


def set_up_through_the_form(page: Page, name: str) -> None:
    page.goto("/setup/")
    expect(page.locator("#setup-form")).to_have_attribute("data-ready", "1")
    page.fill("#f-exp_name", name)
    page.select_option("#f-benchmark", "split_digits")
    # Each strategy brings its own parameters, with their defaults filled in.
    page.select_option("#f-strategy", "naive")
    expect(page.locator("#strategy-params")).to_contain_text("no parameters")
    page.select_option("#f-strategy", "replay")
    expect(page.locator("#f-strategy-params-mem_size")).to_have_value("200")
    expect(page.locator("#f-strategy-params-policy")).to_have_value("experience_balanced")
    page.fill("#f-model-params-hidden_size", "256")
    page.fill("#f-training-device", "cpu")


def test_set_up_run_watch_and_download_a_replay_experiment(page: Page, gina, tmp_path: Path):
    name = "digits-replay"
    page.add_init_script(RECORD_LIVE)
    set_up_through_the_form(page, name)

    # A server-side validation error lands next to its field and nothing is created.
    page.fill("#f-training-epochs", "0")
    page.click("#run-button")
    epochs_field = page.locator('.field[data-path="training.epochs"]')
    expect(epochs_field.locator(".error")).to_contain_text("training.epochs must be at least 1")
    expect(epochs_field).to_have_class(re.compile("invalid"))
    assert gina.get(f"/api/experiments/{name}").status_code == 404

    page.fill("#f-training-epochs", str(EPOCHS))
    page.click("#run-button")
    expect(page).to_have_url(re.compile(rf"/experiments/{name}/$"))

    # While it runs: the first experience ends and the accuracy chart gets its first point.
    first = wait_live(page, lambda s: s["status"] == "running" and s["accuracy_points"] >= 1)
    assert 0 < first["progress"] < 100 and first["heatmap_rows"] == first["accuracy_points"]

    # A reload mid-run shows the history so far, then keeps updating.
    page.reload()
    again = wait_live(page, lambda s: s["loss_points"] >= first["loss_points"], timeout=60)
    assert again["accuracy_points"] >= first["accuracy_points"]
    page.evaluate("() => { window.__liveSeen = []; }")  # from here on, only live updates count

    samples = []
    shot_taken = False
    while True:
        state = live_state(page)
        samples.append(state)
        if state["status"] == "running" and state["accuracy_points"] >= 1 and not shot_taken:
            screenshot(page, "experiment-live.png")
            shot_taken = True
        if state["status"] in ("completed", "failed", "cancelled"):
            break
        assert len(samples) < RUN_TIMEOUT_S * 5, "the run did not finish"
        time.sleep(0.2)
    assert state["status"] == "completed"

    shown = page.evaluate("() => window.__liveSeen")
    running = [s for s in shown if s["status"] == "running"]
    progress_seen = [s["progress"] for s in running if 0 < s["progress"] < 100]
    # The bar moved forward, epoch by epoch, while the run went on, and ended full.
    assert len(set(progress_seen)) >= 3 and progress_seen == sorted(progress_seen), progress_seen
    assert shown[-1]["progress"] == 100
    assert len({s["accuracy_points"] for s in running if s["accuracy_points"] > 0}) >= 2  # points arrived live
    assert all(re.fullmatch(rf"\d+ of {EPOCHS}", s["epoch"]) for s in running)
    assert shot_taken

    # Final metrics as the results document has them; charts and heat map complete.
    results = gina.get(f"/base-scenario/gina/results/{name}").json()
    metrics = results["metrics"]
    expect(page.locator("#final-card")).to_have_attribute("data-loaded", "1")
    expect(page.locator("#m-final_accuracy")).to_have_text(f"{100 * metrics['final_accuracy']:.1f} %")
    expect(page.locator("#m-forgetting")).to_have_text(f"{metrics['forgetting']:.3f}")
    expect(page.locator("#mlflow-link")).to_have_attribute("href", results["mlflow"]["url"])
    done = live_state(page)
    assert done["progress"] == 100 and done["accuracy_points"] == 5 and done["heatmap_rows"] == 5
    assert done["loss_points"] == 5 * EPOCHS
    assert page.locator("#heatmap td").count() == 25

    # The model downloads and loads into its architecture.
    with page.expect_download() as download_info:
        page.click("#download-model")
    path = tmp_path / "model.pt"
    download_info.value.save_as(path)
    model = architecture_build(architecture="simple_mlp", params=results["config"]["model"]["params"])
    model.load_state_dict(torch.load(path, weights_only=True))


def run_through_api(client, name: str, strategy: dict[str, Any], epochs: int) -> None:
    body = {"exp_name": name, "overwrite": True, "strategy": strategy,
            "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
            "model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
            "training": {"epochs": epochs, "device": "cpu"}}
    assert client.post("/base-scenario/setup/", body).status_code == 201
    assert client.post(f"/base-scenario/{client.username}/exec/{name}").status_code == 202
    assert client.wait_status(name, timeout=RUN_TIMEOUT_S)["status"] == "completed"


def test_compare_finished_experiments_and_see_them_on_the_dashboard(page: Page, gina):
    run_through_api(gina, "cmp-naive", {"name": "naive"}, epochs=3)
    run_through_api(gina, "cmp-replay", {"name": "replay", "params": {"mem_size": 200}}, epochs=3)
    run_through_api(gina, "cmp-cumulative", {"name": "cumulative"}, epochs=3)
    names = ["cmp-naive", "cmp-replay", "cmp-cumulative"]

    page.goto("/compare/?" + "&".join(f"exp={n}" for n in names))
    expect(page.locator("body")).to_have_attribute("data-ready", "1")
    expect(page.locator("#scatter-box")).to_have_attribute("data-points", "3")
    expect(page.locator("#curves-box")).to_have_attribute("data-series", "3")
    rows = page.locator("#compare-table tbody tr")
    expect(rows).to_have_count(3)
    accuracy = {}
    for name in names:
        row = page.locator(f'#compare-table tr[data-exp="{name}"]')
        text = row.locator("td").nth(3).inner_text()
        accuracy[name] = float(text.rstrip(" %"))
    # The continual-learning picture: replay remembers what naive fine-tuning forgets.
    assert accuracy["cmp-replay"] > accuracy["cmp-naive"] + 30
    screenshot(page, "compare.png")

    # Unticking an experiment takes it off the charts and out of the address.
    page.uncheck("#pick-cmp-cumulative")
    expect(page.locator("#scatter-box")).to_have_attribute("data-points", "2")
    assert "cmp-cumulative" not in page.url

    page.goto("/")
    for name in names:
        row = page.locator(f'#experiments-table tr[data-exp="{name}"]')
        expect(row.locator(".badge")).to_have_text("completed")
        expect(row.locator(".accuracy")).to_have_text(re.compile(r"\d+\.\d %"))
    screenshot(page, "dashboard.png")


def test_deployment_page_follows_drift_checks_an_update_and_a_rollback(page: Page, gina):
    run_through_api(gina, "deploy-source", {"name": "replay", "params": {"mem_size": 300}}, epochs=5)
    page.on("dialog", lambda dialog: dialog.accept())

    # Deploy through the form, built from the detector and strategy registries.
    page.goto("/deployments/")
    expect(page.locator("#deploy-form")).to_have_attribute("data-ready", "1")
    page.fill("#d-name", "digits-prod")
    page.select_option("#d-exp", "deploy-source")
    page.select_option("#d-detector", "mmd")
    expect(page.locator("#f-detector-p_val")).to_have_value("0.05")
    page.fill("#f-update-training-epochs", "5")
    page.fill("#f-update-training-device", "cpu")
    page.click("#deploy-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/deployments/digits-prod/$"))
    root = page.locator("#deployment")
    expect(root).to_have_attribute("data-champion", "1")
    expect(page.locator("#drift-box")).to_have_attribute("data-points", "0")

    x, y = load_digits_arrays()
    train, test = stratified_split(y, 0.2, 1)
    order = np.random.RandomState(0).permutation(train)

    # Data like the training data: one check, no drift; the page updates without a reload.
    same = gina.post("/api/deployments/digits-prod/ingest",
                     {"inputs": x[test[::2]].tolist(), "labels": y[test[::2]].tolist()})
    assert same.status_code == 200 and not same.json()["drift"]["is_drift"]
    expect(page.locator("#drift-box")).to_have_attribute("data-points", "1")
    expect(page.locator("#drift-box")).to_have_attribute("data-drifts", "0")

    # Rotated digits drift: a red point below the threshold, and an update by replay starts.
    turned = rotate_images(x[order[:600]].reshape(-1, 8, 8), 90).reshape(600, 64)
    drifted = gina.post("/api/deployments/digits-prod/ingest", {"inputs": turned.tolist(),
                                                                 "labels": y[order[:600]].tolist()})
    assert drifted.status_code == 200 and drifted.json()["drift"]["is_drift"]
    update_id = drifted.json()["update"]["id"]
    expect(page.locator("#drift-box")).to_have_attribute("data-points", "2")
    expect(page.locator("#drift-box")).to_have_attribute("data-drifts", "1")
    expect(page.locator("#s-drifts")).to_have_text("1 with drift")
    update_row = page.locator(f'#updates-table tr[data-update="{update_id}"]')
    expect(update_row).to_be_visible()

    # The update finishes live on the page, with the reason for its decision.
    expect(update_row).to_have_attribute("data-status", re.compile("promoted|rejected|failed"),
                                         timeout=RUN_TIMEOUT_S * 1000)
    detail = gina.get("/api/deployments/digits-prod").json()
    update = next(u for u in detail["updates"] if u["id"] == update_id)
    assert update["status"] == "promoted", update
    expect(update_row.locator(".reason")).to_contain_text(update["reason"][:40])
    expect(root).to_have_attribute("data-champion", "2")
    expect(page.locator('#versions-table tr[data-version="2"] .badge.champion')).to_be_visible()
    screenshot(page, "deployment.png")

    # Roll back to the source version: the champion badge moves back.
    page.click('#versions-table tr[data-version="1"] button.rollback')
    expect(root).to_have_attribute("data-champion", "1")
    expect(page.locator('#versions-table tr[data-version="1"] .badge.champion')).to_be_visible()
    assert gina.get("/api/deployments/digits-prod").json()["champion_version"] == 1
    # Each version downloads in the formats that load without CLaaS, the load line beside each.
    newest = page.locator('#versions-table tr[data-version="2"]')
    expect(newest.locator(".download")).to_have_count(3)
    expect(newest.locator('.download[data-format="pt2"] .load-line')).to_have_text(
        "model = torch.export.load(path).module()")
    with page.expect_download() as download_info:
        newest.get_by_role("link", name="torch.export (.pt2)").click()
    assert download_info.value.suggested_filename == "digits-prod-v2.pt2"


def test_register_a_model_and_upload_weights_as_a_new_version(page: Page, gina, tmp_path: Path):
    page.goto("/models/")
    expect(page.locator("#register-form")).to_have_attribute("data-ready", "1")
    page.fill("#r-name", "digits-mlp")
    page.select_option("#r-architecture", "simple_mlp")
    expect(page.locator("#f-params-hidden_size")).to_have_value("128")
    page.fill("#f-params-hidden_size", "32")
    page.click("#register-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/models/digits-mlp/$"))
    expect(page.locator("#versions-table tbody tr")).to_have_count(1)

    # A file that is not a state_dict is refused with the reason next to the file field.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    page.set_input_files("#u-file", str(junk))
    page.click("#upload-form button[type=submit]")
    expect(page.locator('#upload-form .field[data-path="file"] .error')).not_to_be_empty()

    params = gina.get("/api/models/digits-mlp").json()["params"]
    weights = tmp_path / "weights.pt"
    torch.save(architecture_build(architecture="simple_mlp", params=params).state_dict(), weights)
    page.set_input_files("#u-file", str(weights))
    page.fill("#u-note", "trained elsewhere")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#versions-table tbody tr")).to_have_count(2)
    newest = page.locator('#versions-table tr[data-version="2"]')
    expect(newest).to_contain_text("trained elsewhere")
    expect(newest.locator(".badge")).to_have_text("latest")
    with page.expect_download() as download_info:
        newest.get_by_role("link", name="state_dict").click()
    path = tmp_path / "v2.pt"
    download_info.value.save_as(path)
    assert set(torch.load(path, weights_only=True)) == set(torch.load(weights, weights_only=True))


def test_register_your_own_model_as_a_program_and_see_how_each_download_loads(page: Page, gina, tmp_path: Path):
    from tests.modelfactory.programs import ResidualNet, exported

    program = tmp_path / "residual.pt2"
    program.write_bytes(exported(ResidualNet(), torch.randn(4, 64)))
    page.goto("/models/")
    expect(page.locator("#register-form")).to_have_attribute("data-ready", "1")
    page.fill("#r-name", "my-residual")
    page.select_option("#r-architecture", "")
    expect(page.locator("#r-architecture-help")).to_contain_text("torch.export program")
    page.set_input_files("#r-file", str(program))
    page.click("#register-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/models/my-residual/$"))
    expect(page.locator("#model-architecture")).to_have_text("program")
    row = page.locator('#versions-table tr[data-version="1"]')
    expect(row.locator(".download")).to_have_count(2)  # state_dict and pt2: no TorchScript for a program
    expect(row.locator('.download[data-format="pt2"] .load-line')).to_have_text(
        "model = torch.export.load(path).module()")
    with page.expect_download() as download_info:
        row.get_by_role("link", name="torch.export (.pt2)").click()
    path = tmp_path / "v1.pt2"
    download_info.value.save_as(path)
    loaded = torch.export.load(str(path)).module()
    assert loaded(torch.zeros(3, 64)).shape == (3, 10)


def test_the_api_docs_render_offline(page: Page):
    # The machine has no internet: Swagger UI renders only from files the service itself serves.
    from urllib.parse import urlparse

    outside: list[str] = []
    page.on("request", lambda request: outside.append(request.url)
            if urlparse(request.url).hostname != "127.0.0.1" else None)
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("CLaaS API")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert outside == []


def test_cancel_a_running_experiment_then_delete_it(page: Page, gina):
    body = {"exp_name": "long-run", "overwrite": True, "strategy": {"name": "naive"},
            "training": {"epochs": 1000, "device": "cpu"}}
    assert gina.post("/base-scenario/setup/", body).status_code == 201
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto("/experiments/long-run/")
    expect(page.locator("#run-button")).to_have_text("Run")
    page.click("#run-button")
    wait_live(page, lambda s: s["status"] == "running" and s["loss_points"] >= 1)

    page.click("#cancel-button")
    expect(page.locator("#status-badge")).to_have_text("cancelled")
    expect(page.locator("#cancel-button")).to_be_hidden()
    assert gina.get("/base-scenario/gina/status/long-run").json()["status"] == "cancelled"

    page.click("#delete-button")
    expect(page).to_have_url(re.compile(r"^https?://[^/]+/$"))
    assert gina.get("/api/experiments/long-run").status_code == 404
    expect(page.locator('#experiments-table tr[data-exp="long-run"]')).to_have_count(0)
