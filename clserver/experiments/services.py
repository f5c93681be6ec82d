"""Writes of the CL server: set up, execute, cancel and delete experiments."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from claas_site.errors import Conflict
from claas_site.quotas import quota_concurrent_experiments_check, quota_count_check, quota_stored_bytes_check
from claas_site import tracking
from clserver.experiments.events import experiment_event_record
from clserver.models import ACTIVE_STATUSES, Experiment, JobStatus
from clserver.experiments.options import options_validate
from clserver.experiments.selectors import experiment_get
from clserver.experiments.mirror import experiment_run_end
from clserver.jobs.runner import JobNotCancellable, job_cancel
from clserver.jobs.tasks import job_enqueue


def experiment_dir(experiment: Experiment) -> Path:
    """Checkpoints and the final model of one experiment live here."""
    return settings.CHECKPOINT_DIR / str(experiment.owner_id) / f"{experiment.pk}"


def _experiment_files_remove(experiment: Experiment) -> None:
    shutil.rmtree(experiment_dir(experiment), ignore_errors=True)


def _has_deployments(experiment: Experiment) -> bool:
    related = getattr(experiment, "deployments", None)
    return related is not None and related.exists()


def experiment_setup(*, owner: Any, raw: Any, overwrite: bool = False) -> Experiment:
    validated = options_validate(owner=owner, raw=raw)
    name = validated.options["exp_name"]
    with transaction.atomic():
        existing = Experiment.objects.select_for_update().filter(owner=owner, name=name).first()
        if existing is not None:
            if not overwrite:
                raise Conflict(f"An experiment named '{name}' exists; send \"overwrite\": true to replace it.")
            if existing.is_active:
                raise Conflict(f"Experiment '{name}' is {existing.status}; cancel it before replacing it.")
            if existing.continuations.exists() or _has_deployments(existing):
                raise Conflict(f"Experiment '{name}' is used by another experiment or a deployment; "
                               "it cannot be replaced.")
            old = existing
            transaction.on_commit(lambda: _experiment_files_remove(old))
            existing.delete()
        quota_count_check(owner=owner, kind="experiments")  # with the user's row locked
        try:
            experiment = Experiment.objects.create(
                owner=owner, name=name, options=validated.options, status=JobStatus.READY,
                source=validated.from_experiment, registered_version=validated.registered_version,
            )
        except IntegrityError:
            raise Conflict(f"An experiment named '{name}' was created at the same time; try again.")
    return experiment


def experiment_execute(*, owner: Any, name: str) -> Experiment:
    with transaction.atomic():
        experiment = experiment_get(owner=owner, name=name)
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if experiment.is_active:
            raise Conflict(f"Experiment '{name}' is already {experiment.status}.")
        if experiment.source_id and experiment.source.status != JobStatus.COMPLETED:
            raise Conflict(f"Experiment '{name}' continues '{experiment.source.name}', which is "
                           f"{experiment.source.status}, not completed.")
        quota_concurrent_experiments_check(owner=owner, starting=experiment)
        quota_stored_bytes_check(owner=owner)
        fresh = experiment.status != JobStatus.READY
        experiment.status = JobStatus.QUEUED
        experiment.progress = 0.0
        experiment.experience = 0
        experiment.epoch = 0
        experiment.error = ""
        experiment.results = {}
        experiment.cancel_requested = False
        experiment.attempts = 0
        experiment.run_token = ""
        experiment.mlflow_run_id = ""
        experiment.queued_at = timezone.now()
        experiment.started_at = None
        experiment.finished_at = None
        experiment.save()
        if fresh:
            # A re-run starts from scratch: old events would mislead.
            experiment.events.all().delete()
        # Every execution starts without checkpoints; only a re-queued attempt of this
        # execution resumes from the ones it writes.
        transaction.on_commit(lambda: _experiment_files_remove(experiment))
        experiment_event_record(experiment=experiment, type="status", payload={"status": JobStatus.QUEUED})
        job_enqueue(job=experiment)
    return experiment


def experiment_cancel(*, owner: Any, name: str) -> Experiment:
    with transaction.atomic():
        experiment = experiment_get(owner=owner, name=name)
        experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
        try:
            ended = job_cancel(job=experiment)
        except JobNotCancellable:
            raise Conflict(f"Experiment '{name}' is {experiment.status}; only queued or running experiments "
                           "can be cancelled.")
        if ended:
            experiment_event_record(experiment=experiment, type="status", payload={"status": JobStatus.CANCELLED})
            # A queued experiment may hold the run of an earlier attempt (its worker died): end it KILLED.
            transaction.on_commit(lambda: experiment_run_end(experiment=experiment, status=JobStatus.CANCELLED))
    return experiment


def experiment_delete(*, owner: Any, name: str) -> None:
    with transaction.atomic():
        experiment = experiment_get(owner=owner, name=name)
        if experiment.status in ACTIVE_STATUSES:
            raise Conflict(f"Experiment '{name}' is {experiment.status}; cancel it before deleting it.")
        if experiment.continuations.exists():
            raise Conflict(f"Experiment '{name}' is continued by another experiment; delete that one first.")
        if _has_deployments(experiment):
            raise Conflict(f"Experiment '{name}' is the source of a deployment; delete the deployment first.")
        transaction.on_commit(lambda: _experiment_files_remove(experiment))
        # Its MLflow runs (every run under this name, re-runs too) count against the user's quota.
        username, exp_name = experiment.owner.username, experiment.name
        transaction.on_commit(lambda: tracking.runs_forget(username=username, tag="claas.experiment",
                                                           value=exp_name))
        experiment.delete()


def experiment_model_path(*, experiment: Experiment) -> Path | None:
    """The final model's state_dict file, when the experiment has produced one."""
    path = experiment_dir(experiment) / "final_model.pt"
    return path if experiment.results.get("model") and path.is_file() else None
