"""Server restart: the web process stops and starts during a run; nothing is lost and the page catches up.

The worker keeps training while the web process is down (its events go to the database); the
experiment page in a real browser sees its websocket close, reconnects by itself and ends up
showing every epoch of the run exactly once.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.reliability.live import events, options, query, start, wait_for
from tests.service import LiveService

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
N_EXPERIENCES, EPOCHS = 5, 30


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveService]:
    service = LiveService(tmp_path_factory.mktemp("restart"), workers=1).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def signed_in(browser: Browser, live: LiveService, user: Any) -> Page:
    page = browser.new_context(base_url=live.base_url).new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", user.password)
    page.click("button[type=submit]")
    page.wait_for_url(live.base_url + "/")
    return page


def shown(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => ({
        status: document.getElementById('experiment').dataset.status,
        socket: document.getElementById('experiment').dataset.socket,
        epochs: Number(document.getElementById('loss-box').dataset.points),
        experiences: Number(document.getElementById('heatmap').dataset.rows),
    })""")


def stored_epochs(live: LiveService) -> int:
    return query(live, "SELECT count(*) AS n FROM clserver_experimentevent WHERE type = 'epoch_end'")[0]["n"]


def test_a_web_restart_during_a_run_loses_nothing_and_the_page_reconnects(live, browser):
    wes = live.user("wes")
    start(wes, options("through", epochs=EPOCHS, hidden=128, n_experiences=N_EXPERIENCES))
    page = signed_in(browser, live, wes)
    page.goto("/experiments/through/")
    before = wait_for("the page to follow the run", lambda: (lambda s: s if s["socket"] == "open" and s["epochs"] >= 2
                                                             else None)(shown(page)))

    live.stop_web()
    wait_for("the page to see the socket close", lambda: shown(page)["socket"] == "closed", timeout=60)
    # The worker goes on without the web process: its events pile up in the database.
    wait_for("epochs while the web process is down", lambda: stored_epochs(live) >= before["epochs"] + 3, every=0.5)
    live.start_web()

    wait_for("the page to reconnect", lambda: shown(page)["socket"] == "open", timeout=120)
    total = N_EXPERIENCES * EPOCHS
    complete = {"status": "completed", "socket": "open", "epochs": total, "experiences": N_EXPERIENCES}
    # The page draws in batches; wait for the finished picture (a lost or doubled event never gets there).
    wait_for("the whole run on the page", lambda: shown(page) == complete, timeout=600, every=0.5)

    history = events(wes, "through")
    ids = [e["id"] for e in history]
    assert ids == sorted(set(ids))
    assert len([e for e in history if e["type"] == "epoch_end"]) == total
    assert [e["status"] for e in history if e["type"] == "status"] == ["queued", "running", "completed"]
    results = wes.get("/base-scenario/wes/results/through").json()
    assert results["status"] == "completed" and len(results["metrics"]["accuracy_matrix"]) == N_EXPERIENCES
    # A page opened afresh replays the whole history from the database.
    fresh = signed_in(browser, live, wes)
    fresh.goto("/experiments/through/")
    wait_for("the replay", lambda: shown(fresh) == complete, timeout=60)
