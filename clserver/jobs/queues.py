"""Job queues: which Huey carries which kind of job, and which device this worker trains on.

Two queues: `train` (training, model updates; GPU workers) and `default` (drift checks,
light jobs). The embedded mode has one SQLite queue served by one worker, so both names
mean the same Huey there; the scaled mode (`CLAAS_REDIS_URL`) gives `train` its own Redis
queue so that GPU machines take only training and CPU machines the rest.

A job may ask for CUDA (`training.device` = `cuda` or `cuda:N`). A worker without CUDA
that finds only such jobs queued puts its message back on the queue after DEVICE_RETRY_S
instead of claiming one, so they run on the first CUDA worker free; until one exists they
stay `queued`. Which queued job a message starts is the fair pick of clserver/jobs/runner.py.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
from typing import Any, Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from huey import Huey
from huey.contrib.djhuey import HUEY, close_db
from huey.exceptions import RetryTask
from huey.utils import load_class

logger = logging.getLogger(__name__)

QUEUE_TRAIN = "train"
QUEUE_DEFAULT = "default"
QUEUE_NAMES = (QUEUE_TRAIN, QUEUE_DEFAULT)
WORKER_DEVICES = ("auto", "cpu", "cuda")
# A message bounced (no worker with its device, every owner at its limit) waits this long before a worker looks again.
DEVICE_RETRY_S = 2.0


class JobDeferred(Exception):
    """This worker may not start any queued job now; the message goes back on the queue for later."""


class DeviceUnavailable(JobDeferred):
    """This worker lacks the device a job asks for; another worker should take it."""


def _huey_build(config: dict[str, Any]) -> Huey:
    """A Huey from a settings dict, read the way djhuey reads settings.HUEY."""
    options = dict(config)
    name = options.pop("name")
    backend = load_class(options.pop("huey_class", "huey.RedisHuey"))
    options.pop("consumer", None)
    options.update(options.pop("connection", {}))
    return backend(name, **options)


QUEUES: dict[str, Huey] = {
    name: _huey_build(settings.HUEY_QUEUES[name]) if name in settings.HUEY_QUEUES else HUEY
    for name in QUEUE_NAMES
}
QUEUES[QUEUE_DEFAULT] = HUEY


def queue_huey(*, queue: str) -> Huey:
    try:
        return QUEUES[queue]
    except KeyError:
        raise ImproperlyConfigured(f"Unknown job queue '{queue}'; the queues are {', '.join(QUEUE_NAMES)}.") from None


def queues_separate() -> bool:
    """True when the queues are different Hueys, so each worker must say which it serves."""
    return len({id(huey) for huey in QUEUES.values()}) > 1


def queue_task(*, queue: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Like djhuey's db_task, on the given queue; a message bounced by JobDeferred is retried."""
    huey = queue_huey(queue=queue)

    def decorator(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except JobDeferred as exc:
                logger.info("%s; back on the %s queue in %s s", exc, queue, DEVICE_RETRY_S)
                # Not counted against the task's retries: Huey re-schedules it unconditionally.
                raise RetryTask(delay=DEVICE_RETRY_S) from None

        wrapper = huey.task(**options)(close_db(run))
        wrapper.call_local = fn
        return wrapper

    return decorator


def on_worker_startup(fn: Callable[[], None]) -> Callable[[], None]:
    """Run fn when a worker of any queue starts (each Huey has its own startup hooks)."""
    for huey in {id(h): h for h in QUEUES.values()}.values():
        huey.on_startup(name=f"{fn.__module__}.{fn.__name__}")(fn)
    return fn


def worker_torch_threads() -> int | None:
    """How many compute threads torch gets in a worker (CLAAS_TORCH_THREADS); None: torch's own choice."""
    if settings.TORCH_THREADS > 0:
        return settings.TORCH_THREADS
    if os.environ.get("OMP_NUM_THREADS") or settings.REDIS_URL:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


@functools.lru_cache(maxsize=1)
def worker_device() -> str:
    """'cuda' or 'cpu': CLAAS_WORKER_DEVICE when set to one of them, else what torch sees."""
    configured = settings.WORKER_DEVICE
    if configured not in WORKER_DEVICES:
        raise ImproperlyConfigured(f"CLAAS_WORKER_DEVICE must be one of {', '.join(WORKER_DEVICES)}, "
                                   f"not '{configured}'.")
    if configured != "auto":
        return configured
    import torch  # worker only: the web process never asks

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_label() -> str:
    """How a worker names itself on the rows it runs: host, process and device."""
    return f"{socket.gethostname()}:{os.getpid()} ({worker_device()})"


def options_device(options: Any) -> str:
    """The device that job options ask for (`training.device`), 'auto' when they name none."""
    training = options.get("training") if isinstance(options, dict) else None
    device = training.get("device") if isinstance(training, dict) else None
    return str(device or "auto")


def device_can_run(requested: str) -> bool:
    """A CUDA job needs a CUDA worker; 'auto' and 'cpu' jobs run anywhere."""
    return not requested.startswith("cuda") or worker_device() == "cuda"
