"""MLflow registration of deployment versions and their aliases (light jobs; no training here)."""
from __future__ import annotations

from claas_site import tracking
from clserver.deployments import data
from clserver.deployments.models import Deployment, DeploymentVersion
from clserver.deployments.paths import deployment_dir, registered_name
from clserver.deployments.selectors import challenger_version, version_model


def version_register(*, version_id: int) -> None:
    """Log a version's model in its own run and register it (version 1 of a new deployment)."""
    version = DeploymentVersion.objects.select_related("deployment__owner").filter(pk=version_id).first()
    if version is None or version.mlflow_version:
        return
    d = version.deployment
    user = d.owner.username
    model = version_model(deployment=d, version=version)
    example = data.npz_read(deployment_dir(d) / "validation.npz")["x"][:2]
    _, run_id = tracking.run_start(username=user, run_name=f"deploy {d.name} v{version.version}",
                                   params={"deployment": d.name, "source": d.source, "detector": d.detector,
                                           "update": d.update_options},
                                   tags={"claas.user": user, "claas.deployment": d.name,
                                         "claas.version": str(version.version)})
    # The version carries its validation figures: as the run's metrics and as tags of the registered version.
    figures = {k: float(v) for k, v in {"validation_accuracy": version.validation_accuracy, **version.metrics}.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        if figures:
            tracking.run_metrics(run_id=run_id, metrics=figures, step=0)
        logged = tracking.model_log(run_id=run_id, model=model, input_example=example, name="model",
                                    registered_name=registered_name(d),
                                    tags={"claas.deployment": d.name, "claas.version": str(version.version),
                                          **{f"claas.{k}": f"{v:.6g}" for k, v in figures.items()}})
    except Exception:
        tracking.run_end(run_id=run_id, status="FAILED")
        raise
    tracking.run_end(run_id=run_id, status="FINISHED")
    DeploymentVersion.objects.filter(pk=version.pk).update(mlflow_version=logged["version"])
    aliases_sync(deployment_id=d.pk)


def aliases_sync(*, deployment_id: int) -> None:
    """Point `champion` at the serving version and `challenger` at the latest rejected candidate."""
    d = Deployment.objects.select_related("owner").filter(pk=deployment_id).first()
    if d is None:
        return
    name = registered_name(d)
    champion = d.versions.filter(version=d.champion_version).first()
    if champion is not None and champion.mlflow_version:
        tracking.registry_alias(name=name, alias="champion", version=champion.mlflow_version)
    rejected = challenger_version(deployment=d)
    challenger = d.versions.filter(version=rejected).first() if rejected else None
    if challenger is not None and challenger.mlflow_version:
        tracking.registry_alias(name=name, alias="challenger", version=challenger.mlflow_version)
