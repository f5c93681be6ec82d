"""Fair training: one tenant's four long experiments do not hold another tenant's short one behind them.

A real web process and one worker (one thread, the embedded default). Ann queues four long experiments,
the most her quota allows; Ben queues one short experiment while her first trains. The worker's next
free turn goes to Ben (fewest running jobs), not to Ann's second: his result is there before her
second experiment has even started. Order is read from the rows' timestamps, never from durations.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterator

import pytest

from tests.reliability.live import experiment_row, options, start, wait_for
from tests.service import LiveService

LONG = {"epochs": 20, "hidden": 128}
ANN = [f"long-{i}" for i in range(1, 5)]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveService]:
    service = LiveService(tmp_path_factory.mktemp("fairness"), workers=1,
                          env={"CLAAS_WORKER_THREADS": "1", "CLAAS_QUOTA_CONCURRENT_EXPERIMENTS": "4"}).start()
    yield service
    service.stop()


def when(row: dict, field: str) -> datetime:
    assert row[field], (field, row)
    return datetime.fromisoformat(str(row[field]))


def test_another_users_short_job_finishes_before_the_second_of_four_long_ones(live):
    ann, ben = live.user("ann"), live.user("ben")
    for name in ANN:
        start(ann, options(name, **LONG))
    wait_for("ann's first to run", lambda: experiment_row(live, "ann", ANN[0])["status"] == "running")
    start(ben, options("short", epochs=1))
    assert experiment_row(live, "ann", ANN[1])["status"] == "queued"  # ben's is behind three of ann's

    assert ben.wait_status("short", timeout=600)["status"] == "completed"
    # Ann's first ends on its own; once ben's result is in, her other three are stopped to save time.
    assert ann.wait_status(ANN[0], timeout=600)["status"] == "completed"
    for name in ANN[1:]:  # one that already finished answers 409
        assert ann.post(f"/api/experiments/{name}/cancel").status_code in (200, 202, 409), name
    finals = {name: ann.wait_status(name, timeout=300)["status"] for name in ANN[1:]}
    assert set(finals.values()) <= {"cancelled", "completed"}, finals

    short = experiment_row(live, "ben", "short")
    rows = {name: experiment_row(live, "ann", name) for name in ANN}
    assert when(rows[ANN[0]], "started_at") < when(short, "started_at")  # ann's first was running
    # Ben's job ran next: it finished before ann's second started (if it did) and before any of hers ended.
    for name in ANN[1:]:
        if rows[name]["started_at"]:
            assert when(short, "finished_at") <= when(rows[name], "started_at"), (name, rows[name])
        assert when(short, "finished_at") < when(rows[name], "finished_at"), (name, rows[name])
