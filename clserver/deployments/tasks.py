"""Huey tasks of deployments: the update job (train queue) and MLflow registration (light queue)."""
from __future__ import annotations

from typing import Any

from clserver.jobs.runner import JobKind, JobRunner
from clserver.jobs.tasks import STALE_JOB_KINDS, TRAIN_JOB_KINDS, light_task, train_job_run, train_task


@train_task
def run_deployment_update(update_id: int) -> str | None:
    return train_job_run(message=f"DeploymentUpdate {update_id}")


def deployment_update_enqueue(update_id: int) -> None:
    run_deployment_update(update_id)


def _update_failed(row: Any, reason: str) -> None:
    from clserver.deployments.update import update_failed_by_reaper

    update_failed_by_reaper(row, reason)


def _update_runner() -> type[JobRunner]:
    from clserver.deployments.update import DeploymentUpdateJob  # Avalanche: worker only

    return DeploymentUpdateJob


def _register_update_kind() -> None:
    from clserver.deployments.models import DeploymentUpdate

    if not any(kind[0] is DeploymentUpdate for kind in STALE_JOB_KINDS):
        STALE_JOB_KINDS.append((DeploymentUpdate, deployment_update_enqueue, _update_failed))
    if not any(kind.model is DeploymentUpdate for kind in TRAIN_JOB_KINDS):
        TRAIN_JOB_KINDS.append(JobKind(model=DeploymentUpdate, owner_field="deployment__owner",
                                       runner=_update_runner))


_register_update_kind()


@light_task
def deployment_version_register(version_id: int) -> None:
    from clserver.deployments.update import version_register

    version_register(version_id=version_id)


def deployment_version_register_enqueue(version_id: int) -> None:
    deployment_version_register(version_id)


@light_task
def deployment_aliases_sync(deployment_id: int) -> None:
    from clserver.deployments.update import aliases_sync

    aliases_sync(deployment_id=deployment_id)


def deployment_aliases_sync_enqueue(deployment_id: int) -> None:
    deployment_aliases_sync(deployment_id)
