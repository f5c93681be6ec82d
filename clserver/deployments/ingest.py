"""Ingest: a labelled batch checked for drift, buffered, and an update queued when the trigger fires."""
from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from claas_site.quotas import quota_stored_bytes_check
from clserver.deployments import data
from clserver.deployments.detector import drift_check
from clserver.deployments.events import deployment_event_record
from clserver.deployments.models import Deployment, DeploymentBatch, DeploymentUpdate, DriftCheck, UpdateTrigger
from clserver.deployments.paths import deployment_dir, relative_path
from clserver.deployments.renderers import check_as_dict
from clserver.deployments.selectors import deployment_buffered
from clserver.deployments.services import update_start
from clserver.models import ACTIVE_STATUSES


def deployment_ingest(*, deployment: Deployment, inputs: Any, labels: Any) -> dict[str, Any]:
    """Check the batch for drift, buffer it, and start an update when the trigger fires."""
    x = data.inputs_parse(inputs=inputs, input_shape=deployment.model_params["input_shape"])
    y = data.labels_parse(labels=labels, n_rows=len(x), num_classes=deployment.model_params["num_classes"])
    # The batch stays in the buffer until an update takes it: it counts like any stored file.
    quota_stored_bytes_check(owner=deployment.owner, adding=x.nbytes + y.nbytes)
    result = drift_check(deployment=deployment, x=x)
    batch_path = deployment_dir(deployment) / "buffer" / f"{uuid.uuid4().hex}.npz"
    data.npz_write(batch_path, x=x, y=y)
    try:
        with transaction.atomic():
            d = Deployment.objects.select_for_update().select_related("owner").get(pk=deployment.pk)
            check = DriftCheck.objects.create(
                deployment=d, detector=d.detector["name"], n_samples=len(y), is_drift=result.is_drift,
                p_val=result.p_val, distance=result.distance, threshold=result.threshold,
                champion_version=d.champion_version, details=result.details)
            DeploymentBatch.objects.create(deployment=d, file=relative_path(batch_path), n_samples=len(y),
                                           drift_check=check)
            d.samples_seen += len(y)
            d.drift_pending = d.drift_pending or result.is_drift
            d.save(update_fields=["samples_seen", "drift_pending"])
            payload = {k: v for k, v in check_as_dict(check).items() if k not in ("id", "created_at")}
            deployment_event_record(deployment=d, type="drift_check", payload={"check_id": check.number, **payload})
            update, message = _trigger(d, check)
    except BaseException:
        batch_path.unlink(missing_ok=True)
        raise
    return {
        "drift": {"is_drift": result.is_drift, "p_val": result.p_val, "distance": result.distance,
                  "threshold": result.threshold, "detector": deployment.detector["name"], "check_id": check.number,
                  "details": result.details},
        "update": {"id": update.number, "status": update.outcome} if update else None,
        "buffered": deployment_buffered(deployment=deployment),
        "trigger": message,
    }


def _trigger(d: Deployment, check: DriftCheck) -> tuple[DeploymentUpdate | None, str]:
    """Decide, inside the ingest transaction, whether this batch starts an update."""
    opts = d.update_options
    buffered = deployment_buffered(deployment=d)
    trigger, minimum = opts["trigger"], opts["min_samples"]
    if trigger == UpdateTrigger.MANUAL:
        return None, (f"Updates are manual: {buffered} labelled samples are buffered; start one with "
                      f"POST /api/deployments/{d.name}/update.")
    if trigger == UpdateTrigger.DRIFT:
        if not d.drift_pending:
            return None, f"No drift; {buffered} labelled samples wait in the buffer."
        needed = minimum
    else:
        needed = max(minimum, opts["every_n_samples"])
    if buffered < needed:
        what = "Drift was detected but only" if trigger == UpdateTrigger.DRIFT else "Only"
        return None, f"{what} {buffered} labelled samples are buffered; an update starts once {needed} are."
    active = d.updates.filter(status__in=ACTIVE_STATUSES).first()
    if active is not None:
        return None, (f"Update {active.number} is still {active.status}; these samples wait in the buffer "
                      "for the next one.")
    update = update_start(deployment=d, trigger=trigger, options=opts, drift_check=check)
    why = "Drift detected" if trigger == UpdateTrigger.DRIFT else f"{buffered} samples since the last update"
    return update, f"{why} with {update.n_samples} labelled samples buffered: update {update.number} is queued."
