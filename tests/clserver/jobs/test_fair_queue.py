"""The fair pick of the train queue, on rows: which queued job a free worker thread starts.

Each train message claims the fairest queued job (clserver/jobs/runner.py): the owner with the fewest running
jobs, then the owner whose last start is the oldest, then the job queued first; jobs for a device
the worker lacks are left to other workers; every queued job is claimed exactly once.
(The live version, one tenant's four long experiments and another's short one: tests/reliability/test_fairness.py.)
"""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth import get_user_model

from clserver.deployments.models import Deployment, DeploymentUpdate
from clserver.experiments.job import ExperimentJob
from clserver.jobs.fair import QueuedJob, job_fair_claim, job_fair_order
from clserver.jobs.kinds import JobKind, job_kinds
from clserver.jobs.runner import JobRunner
from clserver.models import Experiment, JobStatus
from clserver.jobs.queues import DeviceUnavailable, JobDeferred, worker_device

T0 = datetime(2020, 1, 1, tzinfo=dt_timezone.utc)  # before any real start the claims write


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


@pytest.fixture
def cpu_worker(settings):
    settings.WORKER_DEVICE = "cpu"
    worker_device.cache_clear()
    yield
    worker_device.cache_clear()


@pytest.fixture
def users(db):
    make = get_user_model().objects.create_user
    return {name: make(username=name, password=f"{name}-password") for name in ("ann", "ben", "cid")}


def job(users, owner: str, name: str, *, status: str = JobStatus.QUEUED, queued: int = 0,
        started: int | None = None, device: str = "auto") -> Experiment:
    return Experiment.objects.create(owner=users[owner], name=name, options={"training": {"device": device}},
                                     status=status, queued_at=at(queued),
                                     started_at=None if started is None else at(started))


def claimed_name(runner) -> str:
    assert runner is not None
    return runner.row.name


def claim_all() -> list[str]:
    """Claim until nothing is queued, as the queue's messages would one after the other."""
    names = []
    while (runner := job_fair_claim(kinds=job_kinds())) is not None:
        names.append(claimed_name(runner))
    return names


# --- the order, on rows as the pick sees them --------------------------------------------------
KIND = JobKind(model=Experiment, owner_field="owner", runner=lambda: ExperimentJob)


def queued(pk: int, owner: int, minute: int) -> QueuedJob:
    return QueuedJob(kind=KIND, id=pk, owner_id=owner, queued_at=at(minute), device="auto")


def test_the_owner_with_fewer_running_jobs_goes_first_whatever_the_queue_order():
    jobs = [queued(1, owner=1, minute=0), queued(2, owner=1, minute=1), queued(3, owner=2, minute=9)]
    assert [j.id for j in job_fair_order(queued=jobs, running={1: 1}, last_start={})] == [3, 1, 2]
    assert [j.id for j in job_fair_order(queued=jobs, running={1: 2, 2: 3}, last_start={})] == [1, 2, 3]


def test_on_equal_running_the_owner_who_started_longest_ago_goes_first_and_never_beats_all():
    jobs = [queued(1, owner=1, minute=0), queued(2, owner=2, minute=1), queued(3, owner=3, minute=2)]
    order = job_fair_order(queued=jobs, running={}, last_start={1: at(50), 2: at(40)})
    assert [j.id for j in order] == [3, 2, 1]
    # Same owner, same history: the job queued first, then the lower id.
    same = [queued(7, owner=1, minute=5), queued(5, owner=1, minute=3), queued(6, owner=1, minute=3)]
    assert [j.id for j in job_fair_order(queued=same, running={}, last_start={})] == [5, 6, 7]


def test_the_per_user_cap_leaves_out_owners_at_it():
    jobs = [queued(1, owner=1, minute=0), queued(2, owner=2, minute=1)]
    assert [j.id for j in job_fair_order(queued=jobs, running={1: 1}, last_start={}, per_user=1)] == [2]
    assert job_fair_order(queued=jobs, running={1: 1, 2: 1}, last_start={}, per_user=1) == []
    assert [j.id for j in job_fair_order(queued=jobs, running={1: 1, 2: 1}, last_start={}, per_user=0)] == [1, 2]


# --- the claim, on database rows ------------------------------------------------------------------
def test_a_message_starts_the_other_users_job_queued_behind_four_of_one_user(users, cpu_worker):
    job(users, "ann", "a1", status=JobStatus.RUNNING, started=10)
    for i in range(2, 5):
        job(users, "ann", f"a{i}", queued=i)
    job(users, "ben", "b1", queued=9)
    # ann's a2 message comes first, yet the free thread takes ben's job.
    assert claimed_name(job_fair_claim(kinds=job_kinds())) == "b1"
    Experiment.objects.filter(name__in=["a1", "b1"]).update(status=JobStatus.COMPLETED)
    assert claim_all() == ["a2", "a3", "a4"]


def test_users_take_turns_on_one_worker(users, cpu_worker):
    for i in range(3):
        job(users, "ann", f"a{i}", queued=i)
    for i in range(3):
        job(users, "ben", f"b{i}", queued=10 + i)
    turns = []
    for _ in range(6):  # one worker thread: each job ends before the next message is taken
        runner = job_fair_claim(kinds=job_kinds())
        turns.append(claimed_name(runner))
        runner.finish(JobStatus.COMPLETED)
    assert turns == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert job_fair_claim(kinds=job_kinds()) is None


def test_every_queued_job_is_claimed_once_and_surplus_messages_do_nothing(users, cpu_worker):
    first = job(users, "ann", "again", queued=0)
    job(users, "ann", "a1", queued=1)
    job(users, "ben", "b1", queued=2)
    # Cancelled while queued, then queued again: two messages for one job now.
    Experiment.objects.filter(pk=first.pk).update(status=JobStatus.CANCELLED)
    Experiment.objects.filter(pk=first.pk).update(status=JobStatus.QUEUED, queued_at=at(3))
    job(users, "cid", "gone", queued=4)
    Experiment.objects.filter(name="gone").update(status=JobStatus.CANCELLED)  # its message stays
    messages = 5
    outcomes = [job_fair_claim(kinds=job_kinds()) for _ in range(messages)]
    names = [claimed_name(r) for r in outcomes if r is not None]
    assert sorted(names) == ["a1", "again", "b1"] and outcomes[3:] == [None, None]
    assert set(Experiment.objects.filter(name__in=names).values_list("status", "attempts")) == {("running", 1)}
    assert Experiment.objects.get(name="gone").status == JobStatus.CANCELLED


def test_a_claim_lost_to_another_worker_takes_the_next_job_instead_of_using_up_the_message(users, cpu_worker):
    class RacedJob(ExperimentJob):
        """Another worker claims the same row between this worker's look and its claim."""

        def claim(self) -> bool:
            assert ExperimentJob(self.job_id).claim()
            return super().claim()

    raced_once = iter([RacedJob])
    kinds = [JobKind(model=Experiment, owner_field="owner", runner=lambda: next(raced_once, ExperimentJob))]
    job(users, "ann", "a1", queued=0)
    job(users, "ben", "b1", queued=1)
    assert claimed_name(job_fair_claim(kinds=kinds)) == "b1"
    assert Experiment.objects.get(name="a1").attempts == 1  # run once, by the other worker
    assert job_fair_claim(kinds=kinds) is None


def test_a_cpu_worker_leaves_cuda_jobs_and_puts_the_message_back_when_only_they_remain(users, cpu_worker):
    job(users, "ben", "gpu", queued=0, device="cuda")
    job(users, "ann", "a1", status=JobStatus.RUNNING, started=0)
    job(users, "ann", "cpu", queued=1, device="cpu")
    # ben's job is fairer, but this worker has no CUDA: it starts ann's.
    assert claimed_name(job_fair_claim(kinds=job_kinds())) == "cpu"
    with pytest.raises(DeviceUnavailable, match="asks for 'cuda' and this worker has cpu"):
        job_fair_claim(kinds=job_kinds())
    assert Experiment.objects.get(name="gpu").status == JobStatus.QUEUED


def test_the_cap_defers_the_message_while_the_only_waiting_owner_is_at_it(users, cpu_worker, settings):
    settings.FAIR_RUNNING_PER_USER = 1
    job(users, "ann", "a1", status=JobStatus.RUNNING, started=0)
    job(users, "ann", "a2", queued=1)
    with pytest.raises(JobDeferred, match="CLAAS_FAIR_RUNNING_PER_USER"):
        job_fair_claim(kinds=job_kinds())
    job(users, "ben", "b1", queued=2)
    assert claimed_name(job_fair_claim(kinds=job_kinds())) == "b1"
    Experiment.objects.filter(name="a1").update(status=JobStatus.COMPLETED)
    assert claimed_name(job_fair_claim(kinds=job_kinds())) == "a2"


def test_a_deployment_update_competes_with_experiments_by_its_deployment_owner(users, cpu_worker):
    job(users, "ann", "a1", status=JobStatus.RUNNING, started=0)
    job(users, "ann", "a2", queued=0)
    deployment = Deployment.objects.create(owner=users["ben"], name="prod", source={}, architecture="simple_mlp",
                                           model_params={}, detector={}, update_options={})
    update = DeploymentUpdate.objects.create(deployment=deployment, trigger="manual", options={}, base_version=1,
                                             status=JobStatus.QUEUED, queued_at=at(5))

    class UpdateClaim(JobRunner):
        """Claims an update row without loading its trainer (Avalanche): the pick is what is tested."""

        model = DeploymentUpdate

    # The registered kinds, with the update's runner loaded lightly.
    kinds = [JobKind(model=k.model, owner_field=k.owner_field,
                     runner=k.runner if k.model is Experiment else lambda: UpdateClaim) for k in job_kinds()]
    assert [k.model for k in kinds] == [Experiment, DeploymentUpdate]
    claimed = job_fair_claim(kinds=kinds)
    assert claimed.model is DeploymentUpdate and claimed.job_id == update.pk
    assert DeploymentUpdate.objects.get(pk=update.pk).status == JobStatus.RUNNING
    # ben now runs one, as ann does: ann's turn, her last start being the older.
    assert claimed_name(job_fair_claim(kinds=kinds)) == "a2"
