"""Huey tasks of deployments: queuing the update job (train queue) and MLflow registration (light queue)."""
from __future__ import annotations

from clserver.jobs.tasks import job_enqueue_now, light_task


def deployment_update_enqueue(update_id: int) -> None:
    """A train message for a queued update (any train message starts the fairest queued job)."""
    job_enqueue_now(kind="DeploymentUpdate", job_id=update_id)


@light_task
def deployment_version_register(version_id: int) -> None:
    from clserver.deployments.registration import version_register

    version_register(version_id=version_id)


def deployment_version_register_enqueue(version_id: int) -> None:
    deployment_version_register(version_id)


@light_task
def deployment_aliases_sync(deployment_id: int) -> None:
    from clserver.deployments.registration import aliases_sync

    aliases_sync(deployment_id=deployment_id)


def deployment_aliases_sync_enqueue(deployment_id: int) -> None:
    deployment_aliases_sync(deployment_id)
