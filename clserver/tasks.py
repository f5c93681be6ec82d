"""Huey tasks: thin, they load a row by id and hand it to its job runner."""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections
from huey.contrib.djhuey import HUEY, db_task

from clserver.jobs import job_requeue_stale

logger = logging.getLogger(__name__)


@db_task(retries=0)
def run_experiment(experiment_id: int) -> str | None:
    from clserver.experiment_job import ExperimentJob

    return ExperimentJob(experiment_id).handle()


def experiment_enqueue(experiment_id: int) -> None:
    run_experiment(experiment_id)


def _reap_once() -> None:
    from clserver.experiment_job import experiment_failed_by_reaper
    from clserver.models import Experiment

    job_requeue_stale(model=Experiment, enqueue=experiment_enqueue, on_failed=experiment_failed_by_reaper)


_reaper_started = threading.Lock()


def _reaper_loop() -> None:
    while True:
        try:
            close_old_connections()
            _reap_once()
        except Exception:
            logger.exception("the stale-job reaper failed; trying again")
        time.sleep(settings.JOB_REAPER_INTERVAL_S)


@HUEY.on_startup()
def start_reaper() -> None:
    """Every worker watches for jobs whose worker vanished (missed heartbeats)."""
    if _reaper_started.acquire(blocking=False):
        threading.Thread(target=_reaper_loop, name="claas-reaper", daemon=True).start()
