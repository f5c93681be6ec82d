"""The job lifecycle in one place: claim, heartbeat, cancel, finish or fail, re-queue by the reaper.

Jobs are rows (experiments, deployment updates) built on clserver.jobs.models.Job. A job subclass
implements only `run()`; `handle()`/`execute()` own everything around it; `job_cancel` and
`job_requeue_stale` are the only other writers of a job's status. Which queued job a worker
starts next is clserver/jobs/fair.py's choice.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import Any, Callable

from django.conf import settings
from django.db import close_old_connections, connection, models, transaction
from django.db.models import F
from django.utils import timezone

from clserver.jobs.models import JobStatus
from clserver.jobs.queues import (
    DeviceUnavailable,
    device_can_run,
    options_device,
    worker_device,
    worker_label,
)

logger = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
CANCEL_POLL_S = 1.0


class JobCancelled(Exception):
    """Raised inside a job when its user asked to cancel it."""


class JobSuperseded(Exception):
    """Raised inside a job when another attempt has taken it over."""


class JobRunner:
    """Runs one job row; subclasses implement run() and may use self.check_cancel()."""

    model: type[models.Model]
    stop_reason: str = ""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.token = uuid.uuid4().hex
        self.row: Any = None
        self._cancelled = threading.Event()
        self._superseded = threading.Event()
        self._stop = threading.Event()

    # --- for subclasses ----------------------------------------------------------------------
    def run(self) -> None:
        raise NotImplementedError

    def on_status(self, status: str, error: str = "") -> None:
        """Called after every status change (to record an event)."""

    def check_cancel(self) -> None:
        if self._superseded.is_set():
            raise JobSuperseded()
        if self._cancelled.is_set():
            raise JobCancelled()

    def requested_device(self, options: Any) -> str:
        """The device the job asks for, read from its row's options; override if kept elsewhere."""
        return options_device(options)

    def update(self, **fields: Any) -> int:
        """Write fields on the row, only while this attempt still owns it."""
        return self.model.objects.filter(pk=self.job_id, run_token=self.token).update(**fields)

    # --- lifecycle ---------------------------------------------------------------------------
    def claim(self) -> bool:
        # The label may import torch (seconds on a busy machine): the heartbeat's time is taken after it,
        # or the claim would start already stale and a reaper could re-queue the job at once.
        label = worker_label()
        now = timezone.now()
        claimed = self.model.objects.filter(pk=self.job_id, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, run_token=self.token, worker=label, heartbeat_at=now,
            started_at=now, attempts=F("attempts") + 1,
        )
        if claimed:
            self.row = self.model.objects.get(pk=self.job_id)
        return bool(claimed)

    def device_check(self) -> None:
        """Leave a queued job that needs a device this worker lacks to a worker that has it."""
        fields = ["status", "options"] if hasattr(self.model, "options") else ["status"]
        row = self.model.objects.filter(pk=self.job_id).values(*fields).first()
        if row is None or row["status"] != JobStatus.QUEUED:
            return  # claim() skips it
        wanted = self.requested_device(row.get("options"))
        if not device_can_run(wanted):
            raise DeviceUnavailable(f"{self.model.__name__} {self.job_id} asks for '{wanted}' and "
                                    f"this worker has {worker_device()}")

    def handle(self) -> str | None:
        """Claim this very job and run it (the queue's messages go through job_fair_claim instead)."""
        close_old_connections()
        self.device_check()
        if not self.claim():
            logger.info("%s %s is not queued any more; skipping", self.model.__name__, self.job_id)
            return None
        return self.execute()

    def execute(self) -> str | None:
        """Run a job this attempt has claimed, to its final status."""
        self.on_status(JobStatus.RUNNING)
        beat = threading.Thread(target=self._heartbeat, name=f"heartbeat-{self.job_id}", daemon=True)
        beat.start()
        status, error = JobStatus.COMPLETED, ""
        try:
            self.run()
        except JobCancelled:
            status = JobStatus.CANCELLED
        except JobSuperseded:
            logger.warning("%s %s was taken over by another attempt", self.model.__name__, self.job_id)
            return None
        except Exception as exc:
            logger.exception("%s %s failed", self.model.__name__, self.job_id)
            status, error = JobStatus.FAILED, _error_sentence(exc)
        finally:
            self._stop.set()
            beat.join(timeout=10)
        self.finish(status, error)
        return status

    def finish(self, status: str, error: str = "") -> None:
        if self.update(status=status, error=error, finished_at=timezone.now(), heartbeat_at=None):
            self.on_status(status, error)

    def _heartbeat(self) -> None:
        last_beat = timezone.now()
        try:
            while not self._stop.wait(CANCEL_POLL_S):
                row = self.model.objects.filter(pk=self.job_id).values("run_token", "cancel_requested").first()
                if row is None or row["run_token"] != self.token:
                    self._superseded.set()
                    return
                if row["cancel_requested"]:
                    self._cancelled.set()
                now = timezone.now()
                if (now - last_beat).total_seconds() >= settings.JOB_HEARTBEAT_S:
                    self.update(heartbeat_at=now)
                    last_beat = now
        except Exception:
            logger.exception("heartbeat of %s %s stopped", self.model.__name__, self.job_id)
        finally:
            connection.close()


def _error_sentence(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def job_requeue_stale(*, model: type[models.Model], enqueue: Callable[[int], None],
                      on_failed: Callable[[Any, str], None] | None = None) -> list[int]:
    """Re-queue running jobs whose worker stopped beating; fail those out of attempts.

    Each transition is one conditional UPDATE, so with many reapers only one wins.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_S)
    requeued: list[int] = []
    stale = model.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
    for row in stale.only("id", "attempts", "run_token"):
        base = model.objects.filter(pk=row.pk, status=JobStatus.RUNNING, run_token=row.run_token,
                                    heartbeat_at__lt=cutoff)
        if row.attempts >= settings.JOB_MAX_ATTEMPTS:
            reason = (f"The worker stopped responding {row.attempts} times "
                      f"(no heartbeat for {int(settings.JOB_STALE_AFTER_S)} s); giving up.")
            if base.update(status=JobStatus.FAILED, error=reason, finished_at=timezone.now(),
                           heartbeat_at=None, run_token="") and on_failed:
                on_failed(row, reason)
            continue
        with transaction.atomic():
            if base.update(status=JobStatus.QUEUED, run_token="", heartbeat_at=None,
                           queued_at=timezone.now(), worker=""):
                requeued.append(row.pk)
                transaction.on_commit(lambda pk=row.pk: enqueue(pk))
    if requeued:
        logger.warning("re-queued %s %s after a missed heartbeat", model.__name__, requeued)
    return requeued


class JobNotCancellable(Exception):
    """The job is neither queued nor running."""


def job_cancel(*, job: Any) -> bool:
    """Cancel a job whose row the caller holds locked (select_for_update, in a transaction).

    A queued job ends now (True: the caller records what that means for its kind); a running one is
    asked to stop at its next training iteration (False). Any other status raises JobNotCancellable.
    """
    if job.status == JobStatus.QUEUED:
        job.status = JobStatus.CANCELLED
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "finished_at"])
        return True
    if job.status == JobStatus.RUNNING:
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested"])
        return False
    raise JobNotCancellable(job.status)
