"""Huey tasks: one task per queue kind; a train message starts the fairest queued job of any kind.

`train_task` marks heavy jobs (training, model updates) for the `train` queue and `light_task`
quick ones (drift checks, housekeeping) for the `default` queue (clserver/jobs/queues.py). A train
message names a row, but it runs whichever queued train job is fairest now (clserver/jobs/fair.py).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from django.conf import settings
from django.db import close_old_connections, transaction

from clserver.jobs.fair import job_fair_claim
from clserver.jobs.kinds import job_kinds
from clserver.jobs.runner import job_requeue_stale
from clserver.jobs.queues import QUEUE_DEFAULT, QUEUE_TRAIN, on_worker_startup, queue_task, worker_torch_threads

logger = logging.getLogger(__name__)


def train_task(fn: Callable[..., Any]) -> Any:
    """A heavy job (training, model update): the `train` queue, served by GPU workers."""
    return queue_task(queue=QUEUE_TRAIN, retries=0)(fn)


def light_task(fn: Callable[..., Any]) -> Any:
    """A quick job (drift checks, housekeeping): the `default` queue."""
    return queue_task(queue=QUEUE_DEFAULT, retries=0)(fn)


def train_job_run(*, message: str) -> str | None:
    """One train message: claim the fairest queued train job (maybe not the one the message names) and run it."""
    close_old_connections()
    runner = job_fair_claim(kinds=job_kinds())
    if runner is None:
        logger.info("%s: no train job is queued any more; nothing to run", message)
        return None
    if f"{runner.model.__name__} {runner.job_id}" != message:
        logger.info("%s: starting %s %s, the fairest queued job", message, runner.model.__name__, runner.job_id)
    return runner.execute()


@train_task
def run_train_job(kind: str, job_id: int) -> str | None:
    """The one task of the train queue: any kind of job (clserver/jobs/kinds.py)."""
    return train_job_run(message=f"{kind} {job_id}")


def job_enqueue_now(*, kind: str, job_id: int) -> None:
    run_train_job(kind, job_id)


def job_enqueue(*, job: Any) -> None:
    """Queue a train message for a job row once the transaction that made it `queued` commits."""
    kind, pk = type(job).__name__, job.pk
    transaction.on_commit(lambda: job_enqueue_now(kind=kind, job_id=pk))


def reap_once() -> list[int]:
    requeued: list[int] = []
    for kind in job_kinds():
        requeued += job_requeue_stale(model=kind.model, on_failed=kind.on_failed,
                                      enqueue=lambda pk, name=kind.name: job_enqueue_now(kind=name, job_id=pk))
    return requeued


_reaper_started = threading.Lock()


def _reaper_loop() -> None:
    while True:
        try:
            close_old_connections()
            reap_once()
        except Exception:
            logger.exception("the stale-job reaper failed; trying again")
        time.sleep(settings.JOB_REAPER_INTERVAL_S)


# sched_setattr(2) by architecture; Python has no wrapper for it.
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
WORKER_SLICE_NS = 50_000_000


def thread_slice_set(tid: int, *, nice: int, slice_ns: int) -> bool:
    """Nice value and EEVDF time slice of a Linux thread (kernel 6.12+ honours the slice); False if refused.

    A web thread that wakes with a shorter slice than the running task preempts it at once; with the
    default slices on both sides it may wait for the training thread's slice to run out (milliseconds).
    """
    import ctypes
    import platform
    import struct

    number = _SYS_SCHED_SETATTR.get(platform.machine())
    if number is None or not sys.platform.startswith("linux"):
        return False
    # struct sched_attr: size, policy (SCHED_OTHER), flags, nice, priority, runtime (the slice), deadline,
    # period, util_min, util_max.
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, nice, 0, slice_ns, 0, 0, 0, 0), 56)
    return ctypes.CDLL(None, use_errno=True).syscall(number, tid, attr, 0) == 0


@on_worker_startup
def lower_worker_priority() -> None:
    """Give the CPU to serving first: every thread of this worker process gets nice WORKER_NICE and a long
    time slice (WORKER_SLICE_NS), so that a waking web thread, whose slice is shorter, preempts training
    at once instead of waiting for the training thread's slice to end.

    On Linux both belong to a thread and new threads inherit their creator's, so the threads that exist
    now are all set (torch's compute threads and the job's helpers start later, from these). (Linux's
    SCHED_IDLE policy was measured too: predict p99 while an update trained came out about twice as high.)
    """
    wanted = settings.WORKER_NICE
    if wanted <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            if not thread_slice_set(tid, nice=max(wanted, os.getpriority(os.PRIO_PROCESS, tid)),
                                    slice_ns=WORKER_SLICE_NS):
                if os.getpriority(os.PRIO_PROCESS, tid) < wanted:
                    os.setpriority(os.PRIO_PROCESS, tid, wanted)
        except OSError:  # the thread ended meanwhile, or the platform refuses: run as is
            pass


@on_worker_startup
def limit_torch_threads() -> None:
    """Training uses CLAAS_TORCH_THREADS compute threads (embedded: a core is left to serving)."""
    threads = worker_torch_threads()
    if threads is None:
        return
    import torch  # worker only

    torch.set_num_threads(threads)
    logger.info("torch trains on %s compute thread(s) in this worker", threads)


@on_worker_startup
def cublas_reproducible_workspace() -> None:
    """cuBLAS repeats its results only with a fixed workspace, read when the first CUDA work starts;
    set before any job so that `training.deterministic` holds on a GPU (a few MB; no effect on a CPU)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@on_worker_startup
def start_reaper() -> None:
    """Every worker watches for jobs whose worker vanished (missed heartbeats)."""
    if _reaper_started.acquire(blocking=False):
        threading.Thread(target=_reaper_loop, name="claas-reaper", daemon=True).start()

