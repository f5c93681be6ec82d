"""Input and output shapes of the deployment API (for the OpenAPI schema).

Inputs are checked by the services (registries and numpy), so that a 10,000-row batch is not
validated value by value and every error is one sentence naming the field.
"""
from __future__ import annotations

from rest_framework import serializers


class DetectorSerializer(serializers.Serializer):
    name = serializers.CharField()
    help = serializers.CharField()
    kind = serializers.ChoiceField(choices=["batch", "online"])
    params = serializers.ListField(child=serializers.DictField(), help_text="name, type, default, help, min, max.")
    preprocess = serializers.ListField(child=serializers.DictField(),
                                       help_text="Preprocess choices (dimension reduction before the test).")


class DeploymentSourceSerializer(serializers.Serializer):
    exp_name = serializers.CharField(required=False, help_text="A completed experiment: its final model is version 1.")
    registered = serializers.CharField(required=False, help_text="A registered model (instead of exp_name).")
    version = serializers.IntegerField(required=False, min_value=1, help_text="Its version (default: latest).")
    reference = serializers.CharField(
        required=False, help_text="Required with `registered`: an uploaded dataset of the model's inputs and labels; "
        "80% gives the detector's reference sample and the replay memory, 20% the validation set.")


class DeploymentDetectorSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="A name from /api/detectors/ (default mmd); other keys are its parameters.")
    p_val = serializers.FloatField(required=False)
    preprocess = serializers.DictField(
        required=False, allow_null=True,
        help_text="null, {\"name\": \"random_projection\", \"dim\": 32} or {\"name\": \"penultimate\"}.")


class DeploymentUpdateOptionsSerializer(serializers.Serializer):
    trigger = serializers.ChoiceField(choices=["drift", "every_n_samples", "manual"], required=False)
    strategy = serializers.DictField(required=False, help_text="{\"name\", \"params\"} from /api/strategies/ "
                                     "(default replay; mem_size defaults to memory_size).")
    min_samples = serializers.IntegerField(required=False, help_text="Buffered labelled samples before an update.")
    every_n_samples = serializers.IntegerField(required=False)
    tolerance = serializers.FloatField(required=False, help_text="Promote when candidate >= champion - tolerance.")
    validation_fraction = serializers.FloatField(required=False)
    memory_size = serializers.IntegerField(required=False)
    memory_policy = serializers.ChoiceField(choices=["reservoir", "class_balanced"], required=False)
    training = serializers.DictField(required=False, help_text="epochs, train_mb_size, eval_mb_size, optimizer, "
                                     "device, seed (as for experiments).")


class DeploymentCreateInputSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[A-Za-z0-9_.-]+$", max_length=100)
    source = DeploymentSourceSerializer()
    detector = DeploymentDetectorSerializer(required=False)
    update = DeploymentUpdateOptionsSerializer(required=False)


class PredictInputSerializer(serializers.Serializer):
    inputs = serializers.ListField(help_text="Rows of numbers, each with the model's input size (at most 10,000 rows).")


class PredictOutputSerializer(serializers.Serializer):
    predictions = serializers.ListField(child=serializers.IntegerField())
    model_version = serializers.IntegerField()


class IngestInputSerializer(serializers.Serializer):
    inputs = serializers.ListField(help_text="Rows of numbers, each with the model's input size.")
    labels = serializers.ListField(child=serializers.IntegerField(), help_text="One class label per row.")


class DriftResultSerializer(serializers.Serializer):
    is_drift = serializers.BooleanField()
    p_val = serializers.FloatField(allow_null=True)
    distance = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    detector = serializers.CharField()
    check_id = serializers.IntegerField(help_text="The check's number within the deployment (1, 2, ...).")
    details = serializers.DictField()


class UpdateRefSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The update's number within the deployment (1, 2, ...).")
    status = serializers.CharField(help_text="queued, running, promoted, rejected, failed or cancelled.")


class IngestOutputSerializer(serializers.Serializer):
    drift = DriftResultSerializer()
    update = UpdateRefSerializer(allow_null=True)
    buffered = serializers.IntegerField(help_text="Labelled samples waiting for an update.")
    trigger = serializers.CharField(help_text="Why an update did or did not start.")


class UpdateRequestInputSerializer(serializers.Serializer):
    strategy = serializers.DictField(required=False, help_text="Another strategy for this update only.")
    training = serializers.DictField(required=False, help_text="Training options laid over the deployment's.")


class RollbackInputSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)


class DeploymentSummarySerializer(serializers.Serializer):
    name = serializers.CharField()
    source = serializers.DictField()
    champion_version = serializers.IntegerField()
    detector = serializers.DictField()
    update = serializers.DictField()
    n_drift_checks = serializers.IntegerField()
    last_drift_check = serializers.DictField(allow_null=True)
    n_updates = serializers.IntegerField()
    samples_seen = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class DeploymentDetailSerializer(DeploymentSummarySerializer):
    username = serializers.CharField()
    champion = serializers.DictField(allow_null=True)
    buffered_samples = serializers.IntegerField()
    drift_pending = serializers.BooleanField()
    source_train_samples = serializers.IntegerField()
    drift_checks = serializers.ListField(child=serializers.DictField(), help_text="The latest 200 checks, oldest first.")
    versions = serializers.ListField(child=serializers.DictField())
    updates = serializers.ListField(child=serializers.DictField(),
                                    help_text="Each with status, reason, metrics (champion/candidate accuracy) and "
                                    "cost (samples processed vs. retraining from scratch).")
    mlflow = serializers.DictField()
    urls = serializers.DictField()
