"""App config of the CL server: the job kinds and the Huey tasks are registered here, once, at start-up."""
from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _experiment_runner() -> type:
    from clserver.experiments.job import ExperimentJob  # Avalanche: worker only

    return ExperimentJob


def _experiment_failed(row: Any, reason: str) -> None:
    from clserver.experiments.job import experiment_failed_by_reaper

    experiment_failed_by_reaper(row, reason)


def _update_runner() -> type:
    from clserver.deployments.update import DeploymentUpdateJob  # Avalanche: worker only

    return DeploymentUpdateJob


def _update_failed(row: Any, reason: str) -> None:
    from clserver.deployments.update import update_failed_by_reaper

    update_failed_by_reaper(row, reason)


class ClserverConfig(AppConfig):
    name = "clserver"
    verbose_name = "CL server"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from clserver.deployments import tasks as deployment_tasks  # noqa: F401  (Huey tasks, both processes)
        from clserver.jobs import tasks  # noqa: F401
        from clserver.jobs.kinds import JobKind, job_kind_register
        from clserver.models import DeploymentUpdate, Experiment

        job_kind_register(kind=JobKind(model=Experiment, owner_field="owner", runner=_experiment_runner,
                                       on_failed=_experiment_failed))
        job_kind_register(kind=JobKind(model=DeploymentUpdate, owner_field="deployment__owner",
                                       runner=_update_runner, on_failed=_update_failed))
