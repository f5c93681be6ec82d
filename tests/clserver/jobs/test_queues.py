"""Job queues: which Huey a queue name means, which device a job asks for, and that a job a
worker may not start now goes back on its queue instead of failing."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from huey import MemoryHuey
from huey.contrib.djhuey import HUEY

from clserver.jobs import queues
from clserver.jobs.queues import (
    DEVICE_RETRY_S,
    QUEUE_DEFAULT,
    QUEUE_NAMES,
    QUEUE_TRAIN,
    DeviceUnavailable,
    JobDeferred,
    device_can_run,
    options_device,
    queue_huey,
    queue_task,
    queues_separate,
    worker_device,
)


@pytest.fixture
def worker_on(settings) -> Iterator[object]:
    """Set the device this worker says it has ('cpu' or 'cuda')."""
    def on(device: str) -> None:
        settings.WORKER_DEVICE = device
        worker_device.cache_clear()

    yield on
    worker_device.cache_clear()


@pytest.fixture
def memory_queue(monkeypatch) -> MemoryHuey:
    """The default queue replaced by an in-memory Huey, so messages can be inspected."""
    huey = MemoryHuey("test-queues", immediate=False)
    monkeypatch.setitem(queues.QUEUES, QUEUE_DEFAULT, huey)
    # A queued task closes stale database connections around each run (djhuey's close_db); these
    # jobs use no database, and the test database is not theirs to touch.
    monkeypatch.setattr("huey.contrib.djhuey.close_old_connections", lambda: None)
    return huey


def test_there_are_two_queues_train_and_default():
    assert QUEUE_NAMES == ("train", "default")
    assert queue_huey(queue=QUEUE_DEFAULT) is HUEY


def test_the_embedded_mode_serves_both_queues_from_one_huey():
    assert queue_huey(queue=QUEUE_TRAIN) is queue_huey(queue=QUEUE_DEFAULT)
    assert not queues_separate()


def test_an_unknown_queue_name_is_a_configuration_error_that_lists_the_queues():
    with pytest.raises(ImproperlyConfigured) as caught:
        queue_huey(queue="gpu")
    assert str(caught.value) == "Unknown job queue 'gpu'; the queues are train, default."


@pytest.mark.parametrize("options, device", [
    ({}, "auto"),
    ({"training": {}}, "auto"),
    ({"training": None}, "auto"),
    ({"training": {"device": None}}, "auto"),
    ({"training": {"device": "cpu"}}, "cpu"),
    ({"training": {"device": "cuda:1"}}, "cuda:1"),
    ("not an object", "auto"),
    (None, "auto"),
])
def test_options_device_is_what_the_training_options_name(options, device):
    assert options_device(options) == device


def test_a_cpu_worker_runs_cpu_and_auto_jobs_but_not_cuda_ones(worker_on):
    worker_on("cpu")
    assert worker_device() == "cpu"
    assert device_can_run("auto")
    assert device_can_run("cpu")
    assert not device_can_run("cuda")
    assert not device_can_run("cuda:1")


def test_a_cuda_worker_runs_every_job(worker_on):
    worker_on("cuda")
    assert all(device_can_run(d) for d in ("auto", "cpu", "cuda", "cuda:0"))


def test_an_unknown_worker_device_is_refused_with_the_choices(worker_on):
    worker_on("tpu")
    with pytest.raises(ImproperlyConfigured) as caught:
        worker_device()
    assert str(caught.value) == "CLAAS_WORKER_DEVICE must be one of auto, cpu, cuda, not 'tpu'."


@pytest.mark.parametrize("deferral", [JobDeferred("every owner is at the limit"),
                                      DeviceUnavailable("this worker has no CUDA")])
def test_a_deferred_job_goes_back_on_its_queue_for_later(memory_queue, deferral):
    calls = []

    @queue_task(queue=QUEUE_DEFAULT)
    def job(n: int) -> None:
        calls.append(n)
        raise deferral

    job(7)
    message = memory_queue.dequeue()
    before = datetime.utcnow()  # Huey's etas are naive UTC
    memory_queue.execute(message)
    after = datetime.utcnow()

    assert calls == [7]
    assert memory_queue.pending_count() == 0
    assert memory_queue.scheduled_count() == 1  # back on the queue, DEVICE_RETRY_S from now
    again = memory_queue.scheduled()[0]
    assert again.id == message.id and again.args == (7,)
    delay = timedelta(seconds=DEVICE_RETRY_S)
    assert before + delay <= again.eta <= after + delay


def test_a_failing_job_is_not_put_back(memory_queue):
    @queue_task(queue=QUEUE_DEFAULT)
    def job() -> None:
        raise ValueError("broken")

    job()
    memory_queue.execute(memory_queue.dequeue())
    assert memory_queue.pending_count() == 0
    assert memory_queue.scheduled_count() == 0


def test_call_local_runs_the_job_in_process_without_a_queue(memory_queue):
    @queue_task(queue=QUEUE_DEFAULT)
    def job(a: int, b: int) -> int:
        return a + b

    assert job.call_local(2, 3) == 5
    assert memory_queue.pending_count() == 0
