"""With the production timers, a job whose worker vanished is re-queued within 60 s of the kill."""
from __future__ import annotations

import time
from typing import Iterator

import pytest
from django.conf import settings

from tests.reliability.live import events, experiment_row, options, start, wait_for, worker_of
from tests.service import LiveService

DETECTION_BOUND_S = 60
TIMERS = ("CLAAS_JOB_HEARTBEAT_S", "CLAAS_JOB_STALE_AFTER_S", "CLAAS_JOB_REAPER_INTERVAL_S")


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> Iterator[LiveService]:
    service = LiveService(tmp_path_factory.mktemp("heartbeat"), workers=1)
    for name in TIMERS:  # the test harness's fast timers give way to the settings' defaults
        service.env.pop(name)
    service.start()
    yield service
    service.stop()


def test_the_default_timers_bound_detection_to_a_minute():
    # A beat is at most JOB_HEARTBEAT_S old when the worker dies; after JOB_STALE_AFTER_S of silence
    # the next reaper pass (every JOB_REAPER_INTERVAL_S) re-queues the job.
    assert settings.JOB_STALE_AFTER_S + settings.JOB_REAPER_INTERVAL_S <= DETECTION_BOUND_S
    assert settings.JOB_HEARTBEAT_S < settings.JOB_STALE_AFTER_S


def test_a_vanished_worker_is_noticed_and_its_job_requeued_within_a_minute(production):
    lee = production.user("lee")
    start(lee, options("long", epochs=500, hidden=128))
    wait_for("training to start", lambda: any(e["type"] == "epoch_end" for e in events(lee, "long")))
    production.kill_worker(worker_of(production, experiment_row(production, "lee", "long")["worker"]))
    killed = time.monotonic()
    production.start_worker()  # a fresh worker; its reaper has to notice the silence

    row = wait_for("the job to be re-queued", lambda: (lambda r: r if r["attempts"] == 2 or r["status"] == "queued"
                                                       else None)(experiment_row(production, "lee", "long")),
                   timeout=180, every=0.5)
    noticed = time.monotonic() - killed
    print(f"re-queued {noticed:.1f} s after the kill")
    assert noticed <= DETECTION_BOUND_S, f"re-queued {noticed:.0f} s after the kill"
    assert row["status"] in ("queued", "running")
    # The new worker carries on from the last checkpoint; cancel it to end the test.
    wait_for("the second attempt", lambda: experiment_row(production, "lee", "long")["status"] == "running",
             timeout=180)
    assert lee.post("/api/experiments/long/cancel").status_code == 202
    assert lee.wait_status("long", timeout=180)["status"] == "cancelled"
