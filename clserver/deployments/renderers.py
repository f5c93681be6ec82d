"""A deployment, its drift checks, updates and versions as the dicts the API returns."""
from __future__ import annotations

from typing import Any

from clserver.deployments.models import Deployment, DeploymentUpdate, DeploymentVersion, DriftCheck
from clserver.deployments.paths import registered_name
from clserver.deployments.selectors import challenger_version, deployment_buffered

# GET /api/deployments/<name> lists this many of the latest drift checks (all are stored).
DETAIL_CHECKS = 200


def check_as_dict(check: DriftCheck) -> dict[str, Any]:
    # `number` counts within the deployment; the primary key is a global sequence and stays inside.
    return {"id": check.number, "created_at": check.created_at, "detector": check.detector,
            "n_samples": check.n_samples, "is_drift": check.is_drift, "p_val": check.p_val,
            "distance": check.distance, "threshold": check.threshold,
            "champion_version": check.champion_version, "details": check.details}


def update_as_dict(update: DeploymentUpdate) -> dict[str, Any]:
    metrics = update.metrics or {}
    return {
        "id": update.number, "status": update.outcome, "job_status": update.status,
        "decision": update.decision or None,
        "trigger": update.trigger, "reason": update.reason or None, "error": update.error or None,
        "base_version": update.base_version, "candidate_version": update.candidate_version,
        "n_samples": update.n_samples,
        "champion_accuracy": metrics.get("champion", {}).get("union"),
        "candidate_accuracy": metrics.get("candidate", {}).get("union"),
        "metrics": metrics, "cost": update.cost, "options": update.options, "attempts": update.attempts,
        "drift_check": update.drift_check.number if update.drift_check_id else None,
        "created_at": update.created_at, "started_at": update.started_at, "finished_at": update.finished_at,
    }


def version_as_dict(version: DeploymentVersion, *, champion: int, challenger: int | None) -> dict[str, Any]:
    aliases = (["champion"] if version.version == champion else []) + (
        ["challenger"] if version.version == challenger else [])
    return {
        "version": version.version, "origin": version.origin, "decision": version.decision or None,
        "is_champion": version.version == champion, "aliases": aliases,
        "validation_accuracy": version.validation_accuracy, "metrics": version.metrics,
        "memory_size": version.memory_size, "served_at": version.served_at,
        "mlflow_version": version.mlflow_version or None, "created_at": version.created_at,
    }



def deployment_summary(*, deployment: Deployment) -> dict[str, Any]:
    last = deployment.drift_checks.order_by("-id").first()
    return {
        "name": deployment.name, "source": deployment.source, "champion_version": deployment.champion_version,
        "detector": deployment.detector, "update": deployment.update_options,
        "n_drift_checks": deployment.drift_checks.count(),
        "last_drift_check": check_as_dict(last) if last else None,
        "n_updates": deployment.updates.count(), "samples_seen": deployment.samples_seen,
        "created_at": deployment.created_at,
    }


def deployment_detail(*, deployment: Deployment) -> dict[str, Any]:
    user = deployment.owner.username
    champion = deployment.champion_version
    challenger = challenger_version(deployment=deployment)
    checks = list(deployment.drift_checks.order_by("-id")[:DETAIL_CHECKS])[::-1]
    versions = [version_as_dict(v, champion=champion, challenger=challenger)
                for v in deployment.versions.order_by("version")]
    return {
        **deployment_summary(deployment=deployment),
        "username": user,
        "champion": next((v for v in versions if v["version"] == champion), None),
        "buffered_samples": deployment_buffered(deployment=deployment),
        "drift_pending": deployment.drift_pending,
        "source_train_samples": deployment.source_train_samples,
        "drift_checks": [check_as_dict(c) for c in checks],
        "versions": versions,
        "updates": [update_as_dict(u) for u in deployment.updates.select_related("drift_check").order_by("id")],
        "mlflow": {"registered_name": registered_name(deployment)},
        "urls": {
            "predict": f"/api/deployments/{deployment.name}/predict",
            "ingest": f"/api/deployments/{deployment.name}/ingest",
            "update": f"/api/deployments/{deployment.name}/update",
            "rollback": f"/api/deployments/{deployment.name}/rollback",
            "events": f"/api/deployments/{deployment.name}/events",
            "websocket": f"/ws/deployments/{user}/{deployment.name}/",
        },
    }
