"""The job lifecycle in one place: a fair claim, heartbeat, cancel, finish or fail, re-queue.

Jobs are rows (experiments, deployment updates) with a status, a heartbeat and a run token.
A job subclass implements only `run()`; `handle()` owns everything around it.

Fair training (one tenant must not hold everyone's training behind its queue). Every queued
train job has one message on the queue, put there after its row was committed as queued (by
the request that queued it, or by the reaper's re-queue). A message does not name the job it
starts: it is one claim of the fairest queued job of any train kind (`job_fair_claim`), in
this order: the owner with the fewest running jobs, then the owner whose last start is the
oldest (never started first), then the job queued first. With the queue served in FIFO order,
user B's job queued behind four of user A's therefore starts as soon as a worker thread is
free, not after A's four. Why this stays correct:
- Pending messages >= queued jobs, always: queuing adds one row and one message, a claim uses
  one of each, cancelling a queued row removes only the row, a message that finds nothing
  queued ends without effect, and a message a worker cannot use now (no queued job for its
  device, every owner at the per-user limit) goes back on the queue (JobDeferred). So every
  queued job is claimed by some message, whichever one that is.
- At most once: the claim is a conditional UPDATE from `queued`; a claim that loses a race
  (another worker, a cancel) looks again instead of ending, so a message is never used up
  while a job it could have taken stays queued.
- Experiments and deployment updates share the train queue, so one pick covers both kinds;
  the running counts and last starts are read from the rows, so they hold across workers.
- FAIR_RUNNING_PER_USER (0: no limit) also caps how many jobs one owner runs at once, for
  deployments with many worker threads, where a tenant could otherwise fill all of them while
  nobody else is waiting and keep them until its jobs end.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, Callable, Mapping, Sequence

from django.conf import settings
from django.db import close_old_connections, connection, models, transaction
from django.db.models import Count, F, Max
from django.utils import timezone

from clserver.jobs.models import JobStatus
from clserver.jobs.queues import (
    DeviceUnavailable,
    JobDeferred,
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


# --- the fair claim ------------------------------------------------------------------------------
NEVER = datetime.min.replace(tzinfo=dt_timezone.utc)


@dataclass(frozen=True)
class JobKind:
    """A kind of train job: its rows, the lookup from a row to its owner, its runner (imported on use)."""

    model: type[models.Model]
    owner_field: str
    runner: Callable[[], type[JobRunner]]


@dataclass(frozen=True)
class QueuedJob:
    """A queued row, as much of it as the pick needs."""

    kind: JobKind
    id: int
    owner_id: int
    queued_at: datetime | None
    device: str


def job_fair_order(*, queued: Sequence[QueuedJob], running: Mapping[int, int], last_start: Mapping[int, datetime],
                   per_user: int = 0) -> list[QueuedJob]:
    """The queued jobs, fairest first: owner with the fewest running jobs, then the owner whose last
    start is the oldest (never started first), then the job queued first. With per_user > 0, jobs of
    owners already running that many are left out."""
    allowed = [job for job in queued if per_user <= 0 or running.get(job.owner_id, 0) < per_user]
    return sorted(allowed, key=lambda job: (running.get(job.owner_id, 0), last_start.get(job.owner_id, NEVER),
                                            job.queued_at or NEVER, job.kind.model.__name__, job.id))


def job_queued_list(*, kinds: Sequence[JobKind]) -> list[QueuedJob]:
    queued: list[QueuedJob] = []
    for kind in kinds:
        rows = (kind.model.objects.filter(status=JobStatus.QUEUED).order_by()
                .values_list("id", kind.owner_field, "queued_at", "options"))
        queued += [QueuedJob(kind=kind, id=pk, owner_id=owner, queued_at=at, device=options_device(options))
                   for pk, owner, at, options in rows]
    return queued


def job_owner_stats(*, kinds: Sequence[JobKind], owners: set[int]) -> tuple[Counter, dict[int, datetime]]:
    """Per owner: how many train jobs run now (on any worker), and when the last one started."""
    running: Counter = Counter()
    last_start: dict[int, datetime] = {}
    for kind in kinds:
        rows = kind.model.objects.filter(**{f"{kind.owner_field}__in": owners}).order_by()
        for owner, n in (rows.filter(status=JobStatus.RUNNING).values_list(kind.owner_field)
                         .annotate(n=Count("id"))):
            running[owner] += n
        for owner, at in (rows.filter(started_at__isnull=False).values_list(kind.owner_field)
                          .annotate(at=Max("started_at"))):
            last_start[owner] = max(at, last_start.get(owner, NEVER))
    return running, last_start


def job_fair_claim(*, kinds: Sequence[JobKind]) -> JobRunner | None:
    """Claim the fairest queued job this worker can run; None when no job is queued.

    Raises JobDeferred (the message goes back on the queue) when jobs are queued but none may
    start here now: they need a device this worker lacks, or their owners are at the limit.
    """
    while True:
        queued = job_queued_list(kinds=kinds)
        if not queued:
            return None
        runnable = [job for job in queued if device_can_run(job.device)]
        if not runnable:
            job = queued[0]
            raise DeviceUnavailable(f"{job.kind.model.__name__} {job.id} asks for '{job.device}' and "
                                    f"this worker has {worker_device()}")
        running, last_start = job_owner_stats(kinds=kinds, owners={job.owner_id for job in runnable})
        order = job_fair_order(queued=runnable, running=running, last_start=last_start,
                               per_user=settings.FAIR_RUNNING_PER_USER)
        if not order:
            raise JobDeferred(f"{len(runnable)} queued job(s) wait: their owners already run "
                              f"{settings.FAIR_RUNNING_PER_USER} each (CLAAS_FAIR_RUNNING_PER_USER)")
        job = order[0]
        runner = job.kind.runner()(job.id)
        if runner.claim():
            return runner
        # Taken by another worker or cancelled since the look: look again, so this message is not
        # used up while a job it could start is still queued.
