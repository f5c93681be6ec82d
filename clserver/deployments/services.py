"""Deployment writes: create from a source, predict, queue / request / cancel updates, roll back, delete."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from claas_site import tracking
from claas_site.errors import Conflict, InvalidInput, NotFound
from claas_site.params import keys_only
from claas_site.quotas import quota_count_check, quota_stored_bytes_check
from clserver.deployments import data
from clserver.deployments.detector import detector_cache_put
from clserver.deployments.events import deployment_event_record, update_event_payload
from clserver.deployments.models import (
    Deployment,
    DeploymentBatch,
    DeploymentUpdate,
    DeploymentVersion,
    DriftCheck,
    UpdateTrigger,
    VersionOrigin,
)
from clserver.deployments.options import update_options, update_options_override
from clserver.deployments.paths import deployment_dir, deployment_key, registered_name, relative_path
from clserver.deployments.selectors import deployment_buffered
from clserver.deployments.sources import DATA_SEED, source_resolve
from clserver.drift import detectors as drift
from clserver.experiments.options import validate_name
from clserver.jobs.runner import JobNotCancellable, job_cancel
from clserver.models import ACTIVE_STATUSES, JobStatus
from clserver.serving import cache as serving

CREATE_KEYS = ("name", "source", "detector", "update")
# The validation set is a class-balanced sample of the source's test data, at most this big.
VALIDATION_MAX = 2000


# --- create --------------------------------------------------------------------------------------
def deployment_create(*, owner: Any, raw: Any) -> Deployment:
    """Validate, fit the detector, sample reference / validation / memory, store version 1.

    The files are written to a staging folder first and moved into place in the same
    transaction that creates the rows, so a failure leaves neither rows nor files.
    """
    if not isinstance(raw, dict):
        raise InvalidInput("The request body must be a JSON object.")
    keys_only(raw, allowed=CREATE_KEYS, where="request body")
    name = validate_name(raw.get("name"), "name")
    if Deployment.objects.filter(owner=owner, name=name).exists():
        raise Conflict(f"A deployment named '{name}' exists; delete it first or choose another name.")
    quota_count_check(owner=owner, kind="deployments")
    detector_opts = drift.detector_options(raw=raw.get("detector"))
    update_opts = update_options(raw=raw.get("update"))
    src = source_resolve(owner=owner, raw=raw.get("source"))

    try:
        champion = serving.model_load(architecture=src.architecture, params=src.params,
                                      weights_file=_relative_or_abs(src.weights))
    except (RuntimeError, OSError, KeyError) as exc:
        raise InvalidInput(f"The source model's weights do not load into its architecture: {exc}".splitlines()[0])
    rng = np.random.RandomState(DATA_SEED)
    n_ref = min(detector_opts["n_reference"], len(src.y_train))
    x_ref = src.x_train[np.sort(rng.choice(len(src.y_train), n_ref, replace=False))]
    val_idx = data.class_balanced_indices(src.y_test, VALIDATION_MAX, rng)
    x_val, y_val = src.x_test[val_idx], src.y_test[val_idx]
    memory = data.memory_initial(x=src.x_train, y=src.y_train, size=update_opts["memory_size"],
                                 num_classes=src.params["num_classes"], rng=rng)
    # What version 1 will store (weights, memory, validation set, the detector's reference, and the
    # weights' MLflow copy when that store is local) counts before anything is written.
    mlflow_copy = src.weights.stat().st_size if tracking.user_artifact_dir(username=owner.username) else 0
    quota_stored_bytes_check(owner=owner, adding=src.weights.stat().st_size + mlflow_copy + x_ref.nbytes
                             + x_val.nbytes + y_val.nbytes + memory.x.nbytes + memory.y.nbytes)
    detector = drift.detector_fit(options=detector_opts, x_ref=x_ref, model=champion,
                                  input_shape=src.params["input_shape"])

    staging = settings.DEPLOYMENT_DIR / str(owner.pk) / f".staging-{uuid.uuid4().hex}"
    final: Path | None = None
    try:
        (staging / "versions").mkdir(parents=True)
        shutil.copyfile(src.weights, staging / "versions" / "v1.pt")
        data.memory_write(staging / "versions" / "v1-memory.npz", memory)
        data.npz_write(staging / "validation.npz", x=x_val, y=y_val)
        drift.detector_save(detector, staging / "detector")
        validation_accuracy = serving.accuracy(champion, x_val, y_val)
        with transaction.atomic():
            # Decided with the user's row locked; the staging folder is counted as it is on disk now.
            quota_count_check(owner=owner, kind="deployments")
            quota_stored_bytes_check(owner=owner, adding=mlflow_copy)
            deployment = Deployment.objects.create(
                owner=owner, name=name, source=src.source, source_experiment=src.experiment,
                source_model_version=src.model_version, architecture=src.architecture, model_params=src.params,
                detector=detector_opts, update_options=update_opts, champion_version=1,
                source_train_samples=src.train_samples,
            )
            final = deployment_dir(deployment)
            if final.exists():  # a row id reused after a crash: its old files are orphans
                shutil.rmtree(final)
            staging.rename(final)
            version = DeploymentVersion.objects.create(
                deployment=deployment, version=1, origin=VersionOrigin.SOURCE,
                weights_file=relative_path(final / "versions" / "v1.pt"),
                memory_file=relative_path(final / "versions" / "v1-memory.npz"), memory_size=len(memory),
                validation_accuracy=validation_accuracy,
                metrics={"validation_samples": int(len(y_val)), "reference_samples": int(n_ref)},
                served_at=timezone.now(),
            )
            deployment_event_record(deployment=deployment, type="created", payload={
                "champion_version": 1, "validation_accuracy": validation_accuracy, "detector": detector_opts["name"]})
            transaction.on_commit(lambda: _version_register_enqueue(version.pk))
    except IntegrityError:
        _remove(staging, final)
        raise Conflict(f"A deployment named '{name}' was created at the same time; choose another name.")
    except BaseException:
        _remove(staging, final)
        raise
    detector_cache_put(deployment=deployment, detector=detector)
    return deployment


def _relative_or_abs(path: Path) -> str:
    try:
        return relative_path(path)
    except ValueError:
        return str(path)


def _remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _version_register_enqueue(version_id: int) -> None:
    from clserver.deployments.tasks import deployment_version_register_enqueue

    deployment_version_register_enqueue(version_id)


def _aliases_sync_enqueue(deployment_id: int) -> None:
    from clserver.deployments.tasks import deployment_aliases_sync_enqueue

    deployment_aliases_sync_enqueue(deployment_id)


# --- predict -------------------------------------------------------------------------------------
def deployment_predict(*, deployment: Deployment, inputs: Any) -> dict[str, Any]:
    """The champion's predictions, from a model cached per (deployment, version)."""
    x = data.inputs_parse(inputs=inputs, input_shape=deployment.model_params["input_shape"])
    version = deployment.versions.get(version=deployment.champion_version)
    model = serving.model_cached(deployment_key=deployment_key(deployment), version=version.version,
                                 architecture=deployment.architecture, params=deployment.model_params,
                                 weights_file=version.weights_file)
    predictions = serving.model_predict(model, x)
    return {"predictions": predictions.tolist(), "model_version": version.version}


# --- updates ------------------------------------------------------------------------------------
def update_start(*, deployment: Deployment, trigger: str, options: dict[str, Any],
                 drift_check: DriftCheck | None) -> DeploymentUpdate:
    """Queue an update that takes every buffered batch (call inside a transaction, the row locked)."""
    from clserver.deployments.tasks import deployment_update_enqueue

    batches = deployment.batches.filter(update__isnull=True)
    n = int(batches.aggregate(n=Sum("n_samples"))["n"] or 0)
    update = DeploymentUpdate.objects.create(
        deployment=deployment, trigger=trigger, options=options, base_version=deployment.champion_version,
        n_samples=n, samples_seen_total=deployment.source_train_samples + deployment.samples_seen,
        drift_check=drift_check, status=JobStatus.QUEUED, queued_at=timezone.now())
    batches.update(update=update)
    deployment.drift_pending = False
    deployment.save(update_fields=["drift_pending"])
    deployment_event_record(deployment=deployment, type="update", payload=update_event_payload(update))
    transaction.on_commit(lambda: deployment_update_enqueue(update.pk))
    return update


def deployment_update_request(*, deployment: Deployment, raw: Any) -> DeploymentUpdate:
    """POST .../update: start an update now, optionally with other strategy or training options."""
    options = update_options_override(base=deployment.update_options, raw=raw)
    with transaction.atomic():
        d = Deployment.objects.select_for_update().select_related("owner").get(pk=deployment.pk)
        active = d.updates.filter(status__in=ACTIVE_STATUSES).first()
        if active is not None:
            raise Conflict(f"Update {active.number} of deployment '{d.name}' is already {active.status}.")
        buffered = deployment_buffered(deployment=d)
        if buffered < options["min_samples"]:
            raise Conflict(f"Only {buffered} labelled samples are buffered; an update needs at least "
                           f"{options['min_samples']} (update.min_samples). Ingest more data first.",
                           details={"buffered": buffered, "min_samples": options["min_samples"]})
        return update_start(deployment=d, trigger=UpdateTrigger.MANUAL, options=options, drift_check=None)


def deployment_update_cancel(*, deployment: Deployment, update_id: int) -> DeploymentUpdate:
    """Cancel the deployment's update number `update_id` (its number within the deployment, as shown)."""
    with transaction.atomic():
        update = DeploymentUpdate.objects.select_for_update().filter(deployment=deployment, number=update_id).first()
        if update is None:
            raise NotFound(f"Deployment '{deployment.name}' has no update {update_id}.")
        try:
            ended = job_cancel(job=update)
        except JobNotCancellable:
            raise Conflict(f"Update {update_id} is {update.outcome}; only queued or running updates can be "
                           "cancelled.")
        if ended:
            update_release_batches(update=update)
            deployment_event_record(deployment=deployment, type="update", payload=update_event_payload(update))
    return update


def update_release_batches(*, update: DeploymentUpdate) -> int:
    """Put an update's batches back in the buffer (it failed, was cancelled or was rejected)."""
    return DeploymentBatch.objects.filter(update=update).update(update=None)


def deployment_rollback(*, deployment: Deployment, version: Any) -> Deployment:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput("version must be a positive integer: the version to serve again.",
                           details={"version": str(version)[:50]})
    with transaction.atomic():
        d = Deployment.objects.select_for_update().select_related("owner").get(pk=deployment.pk)
        target = d.versions.filter(version=version).first()
        served = list(d.versions.filter(served_at__isnull=False).values_list("version", flat=True))
        if target is None:
            raise InvalidInput(f"Deployment '{d.name}' has no version {version}; versions that served: "
                               f"{', '.join(map(str, served))}.", details={"version": version})
        if target.served_at is None:
            raise Conflict(f"Version {version} was rejected by validation and never served; roll back to one "
                           f"that served: {', '.join(map(str, served))}.", details={"version": version})
        if d.champion_version != version:
            previous = d.champion_version
            d.champion_version = version
            d.save(update_fields=["champion_version"])
            deployment_event_record(deployment=d, type="rollback",
                                    payload={"from_version": previous, "champion_version": version})
            transaction.on_commit(lambda: _aliases_sync_enqueue(d.pk))
    return d


def deployment_delete(*, deployment: Deployment) -> None:
    """Delete a deployment, its files, and its MLflow runs, their files and its registered model."""
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        active = d.updates.filter(status__in=ACTIVE_STATUSES).first()
        if active is not None:
            raise Conflict(f"Update {active.number} of deployment '{d.name}' is {active.status}; cancel it first.")
        folder, key = deployment_dir(d), deployment_key(d)
        username, registered = d.owner.username, registered_name(d)
        d.delete()
        transaction.on_commit(lambda: (shutil.rmtree(folder, ignore_errors=True), serving.deployment_forget(key)))
        # Its MLflow copies count against the user's quota: they go too.
        transaction.on_commit(lambda: tracking.runs_forget(username=username, tag="claas.deployment", value=d.name,
                                                           registered=registered))

