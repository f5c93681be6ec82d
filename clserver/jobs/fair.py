"""Which queued train job a free worker starts: the fair claim across every job kind and owner.

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

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Mapping, Sequence

from django.conf import settings
from django.db.models import Count, Max

from clserver.jobs.kinds import JobKind
from clserver.jobs.models import JobStatus
from clserver.jobs.queues import DeviceUnavailable, JobDeferred, device_can_run, options_device, worker_device
from clserver.jobs.runner import JobRunner

NEVER = datetime.min.replace(tzinfo=dt_timezone.utc)




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
