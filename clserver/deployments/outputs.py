"""Output serializers of the deployment API: a deployment, its drift checks, versions and updates."""
from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from clserver.deployments.models import Deployment, DeploymentUpdate, DeploymentVersion, DriftCheck
from clserver.deployments.paths import registered_name
from clserver.deployments.selectors import challenger_version, deployment_buffered
from modelfactory.serializers import DownloadSerializer, downloads

# GET /api/deployments/<name> lists this many of the latest drift checks (all are stored).
DETAIL_CHECKS = 200


class BlankAsNullField(serializers.CharField):
    """A text column whose blank value ("") the API shows as null."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    def to_representation(self, value: Any) -> str | None:
        return str(value) or None


class PathField(serializers.CharField):
    """A URL path of the deployment, from a template with `{name}` and `{user}` (its owner)."""

    def __init__(self, template: str, **kwargs: Any) -> None:
        self.template = template
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, deployment: Deployment) -> str:
        return self.template.format(name=deployment.name, user=deployment.owner.username)


class DriftCheckSerializer(serializers.Serializer):
    # `number` counts within the deployment; the primary key is a global sequence and stays inside.
    id = serializers.IntegerField(source="number", help_text="The check's number within the deployment (1, 2, ...).")
    created_at = serializers.DateTimeField()
    detector = serializers.CharField()
    n_samples = serializers.IntegerField()
    is_drift = serializers.BooleanField()
    p_val = serializers.FloatField(allow_null=True)
    distance = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    champion_version = serializers.IntegerField(help_text="The version that served when the batch came.")
    details = serializers.DictField()


class DeploymentUpdateSerializer(serializers.Serializer):
    """An update: the job that trains a candidate on the buffered data, and its decision."""

    id = serializers.IntegerField(source="number", help_text="The update's number within the deployment (1, 2, ...).")
    status = serializers.CharField(source="outcome",
                                   help_text="queued, running, promoted, rejected, failed or cancelled.")
    job_status = serializers.CharField(source="status", help_text="The job's own status (completed once it ran).")
    decision = BlankAsNullField(help_text="promoted or rejected; null until decided.")
    trigger = serializers.CharField()
    reason = BlankAsNullField()
    error = BlankAsNullField()
    base_version = serializers.IntegerField(help_text="The champion the update starts from.")
    candidate_version = serializers.IntegerField(allow_null=True)
    n_samples = serializers.IntegerField(help_text="Buffered samples handed to this update.")
    champion_accuracy = serializers.SerializerMethodField()
    candidate_accuracy = serializers.SerializerMethodField()
    metrics = serializers.SerializerMethodField()
    cost = serializers.DictField(help_text="Samples processed vs. retraining from scratch.")
    options = serializers.DictField()
    attempts = serializers.IntegerField()
    drift_check = serializers.IntegerField(source="drift_check.number", allow_null=True,
                                           help_text="The number of the drift check that started it.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_champion_accuracy(self, update: DeploymentUpdate) -> float | None:
        return (update.metrics or {}).get("champion", {}).get("union")

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_candidate_accuracy(self, update: DeploymentUpdate) -> float | None:
        return (update.metrics or {}).get("candidate", {}).get("union")

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_metrics(self, update: DeploymentUpdate) -> dict[str, Any]:
        return update.metrics or {}


# Rendered with context `champion` (the serving version) and `challenger` (the latest rejected one).
class DeploymentVersionSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    origin = serializers.CharField(help_text="source, update or rollback.")
    decision = BlankAsNullField(help_text="promoted or rejected; null for version 1.")
    is_champion = serializers.SerializerMethodField()
    aliases = serializers.SerializerMethodField(help_text="Its MLflow aliases.")
    validation_accuracy = serializers.FloatField(allow_null=True)
    metrics = serializers.DictField()
    memory_size = serializers.IntegerField()
    served_at = serializers.DateTimeField(allow_null=True, help_text="When it first became the champion.")
    mlflow_version = BlankAsNullField()
    created_at = serializers.DateTimeField()
    downloads = serializers.SerializerMethodField(help_text="The version as state_dict, pt2 (torch.export) and "
                                                            "TorchScript where the architecture allows, each with "
                                                            "the line that loads it without CLaaS.")

    def get_is_champion(self, version: DeploymentVersion) -> bool:
        return version.version == self.context["champion"]

    @extend_schema_field(serializers.ListField(child=serializers.ChoiceField(choices=["champion", "challenger"])))
    def get_aliases(self, version: DeploymentVersion) -> list[str]:
        return (["champion"] if version.version == self.context["champion"] else []) + (
            ["challenger"] if version.version == self.context["challenger"] else [])

    @extend_schema_field(DownloadSerializer(many=True))
    def get_downloads(self, version: DeploymentVersion) -> list[dict[str, str]]:
        d = version.deployment
        return downloads(base=f"/api/deployments/{d.name}/versions/{version.version}/download",
                         architecture=d.architecture)


class DeploymentSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    source = serializers.DictField()
    champion_version = serializers.IntegerField()
    detector = serializers.DictField()
    update = serializers.DictField(source="update_options")
    n_drift_checks = serializers.IntegerField(source="drift_checks.count")
    last_drift_check = serializers.SerializerMethodField()
    n_updates = serializers.IntegerField(source="updates.count")
    samples_seen = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(DriftCheckSerializer(allow_null=True))
    def get_last_drift_check(self, deployment: Deployment) -> dict[str, Any] | None:
        last = deployment.drift_checks.order_by("-id").first()
        return DriftCheckSerializer(last).data if last else None


class DeploymentMlflowSerializer(serializers.Serializer):
    registered_name = serializers.SerializerMethodField()

    def get_registered_name(self, deployment: Deployment) -> str:
        return registered_name(deployment)


class DeploymentUrlsSerializer(serializers.Serializer):
    predict = PathField("/api/deployments/{name}/predict")
    ingest = PathField("/api/deployments/{name}/ingest")
    update = PathField("/api/deployments/{name}/update")
    rollback = PathField("/api/deployments/{name}/rollback")
    events = PathField("/api/deployments/{name}/events")
    websocket = PathField("/ws/deployments/{user}/{name}/")


class DeploymentDetailSerializer(DeploymentSummarySerializer):
    username = serializers.CharField(source="owner.username")
    champion = serializers.SerializerMethodField()
    buffered_samples = serializers.SerializerMethodField()
    drift_pending = serializers.BooleanField()
    source_train_samples = serializers.IntegerField()
    drift_checks = serializers.SerializerMethodField()
    versions = serializers.SerializerMethodField()
    updates = serializers.SerializerMethodField()
    mlflow = DeploymentMlflowSerializer(source="*")
    urls = DeploymentUrlsSerializer(source="*")

    def to_representation(self, deployment: Deployment) -> dict[str, Any]:
        # `champion` is one of `versions`: they are rendered once for both.
        context = {"champion": deployment.champion_version, "challenger": challenger_version(deployment=deployment)}
        self._versions = DeploymentVersionSerializer(deployment.versions.order_by("version"), many=True,
                                                     context=context).data
        return super().to_representation(deployment)

    @extend_schema_field(DeploymentVersionSerializer(allow_null=True))
    def get_champion(self, deployment: Deployment) -> dict[str, Any] | None:
        return next((v for v in self._versions if v["version"] == deployment.champion_version), None)

    @extend_schema_field(serializers.IntegerField(help_text="Labelled samples waiting for an update."))
    def get_buffered_samples(self, deployment: Deployment) -> int:
        return deployment_buffered(deployment=deployment)

    @extend_schema_field(DriftCheckSerializer(many=True, help_text=f"The latest {DETAIL_CHECKS} checks, oldest first."))
    def get_drift_checks(self, deployment: Deployment) -> list[dict[str, Any]]:
        checks = list(deployment.drift_checks.order_by("-id")[:DETAIL_CHECKS])[::-1]
        return DriftCheckSerializer(checks, many=True).data

    @extend_schema_field(DeploymentVersionSerializer(many=True))
    def get_versions(self, deployment: Deployment) -> list[dict[str, Any]]:
        return self._versions

    @extend_schema_field(DeploymentUpdateSerializer(many=True))
    def get_updates(self, deployment: Deployment) -> list[dict[str, Any]]:
        updates = deployment.updates.select_related("drift_check").order_by("id")
        return DeploymentUpdateSerializer(updates, many=True).data
