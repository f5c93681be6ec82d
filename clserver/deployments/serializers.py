"""Input shapes of the deployment API, and the output shapes of predict and ingest (the deployment,
its checks, versions and updates are rendered by outputs.py).

Inputs are checked by the services (Params, registries and numpy), so that a 10,000-row batch is
not validated value by value and every error is one sentence naming the field; the option
serializers here are generated from those same Params and registries.
"""
from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from claas_site.serializers import params_serializer, registry_serializer
from clserver.deployments.options import UPDATE_EXCLUDED, UPDATE_PARAMS
from clserver.drift.detectors import DETECTORS, PREPROCESSORS
from clserver.experiments.options import NAME_RE, TRAINING_PARAMS
from clserver.experiments.serializers import BodyInputSerializer, InDocumentOrder, TrainingOptionSerializer
from clserver.models import NAME_MAX_LENGTH
from clserver.training.strategies import OPTIMIZERS, STRATEGIES


class DetectorSerializer(InDocumentOrder, serializers.Serializer):
    name = serializers.CharField()
    help = serializers.CharField()
    kind = serializers.ChoiceField(choices=["batch", "online"], required=False)
    feature_wise = serializers.BooleanField(required=False,
                                            help_text="Present (true) when it tests each feature on its own.")
    params = serializers.ListField(child=serializers.DictField(), help_text="name, type, default, help, min, max.")
    implementation = serializers.CharField(help_text="The code that runs it: \"alibi-detect <version>\" or "
                                           "\"claas\" (CLaaS's own, used for ks, mmd and lsdd without alibi-detect).")
    licence = serializers.CharField(help_text="That code's licence (alibi-detect: Business Source License 1.1).")
    available = serializers.BooleanField(help_text="False when it needs alibi-detect and that is not installed.")
    preprocess = serializers.ListField(child=serializers.DictField(),
                                       help_text="Preprocess choices (dimension reduction before the test).")


class DeploymentSourceSerializer(serializers.Serializer):
    exp_name = serializers.CharField(required=False, help_text="A completed experiment: its final model is version 1.")
    registered = serializers.CharField(required=False, help_text="A registered model (instead of exp_name).")
    version = serializers.IntegerField(required=False, min_value=1, help_text="Its version (default: latest).")
    reference = serializers.CharField(
        required=False, help_text="Required with `registered`: an uploaded dataset of the model's inputs and labels; "
        "80% gives the detector's reference sample and the replay memory, 20% the validation set.")


# Generated from the declarations that validate them (the update Params, the detector, preprocess,
# strategy and optimizer registries, the experiments' training Params): they cannot drift.
def _preprocess() -> serializers.Field:
    return registry_serializer(registry=PREPROCESSORS, component="PreprocessOption", required=False, allow_null=True,
                               help_text="Dimension reduction before the test: null (default), "
                               "{\"name\": \"random_projection\", \"dim\": 32} or {\"name\": \"penultimate\"}.")


def _update_strategy() -> serializers.Field:
    return registry_serializer(registry=STRATEGIES, component="UpdateStrategyOption", prefix="StrategyOption",
                               nested="params", exclude=tuple(UPDATE_EXCLUDED), required=False,
                               help_text="A name from /api/strategies/ with its params (default replay; "
                               "its mem_size defaults to memory_size).")


DeploymentUpdateOptionsSerializer = params_serializer(
    component="DeploymentUpdateOptions", params=UPDATE_PARAMS,
    fields={"strategy": _update_strategy(), "training": TrainingOptionSerializer(required=False, allow_null=True)})
TrainingOverrideSerializer = params_serializer(
    component="TrainingOverride", params=TRAINING_PARAMS, with_defaults=False,
    fields={"optimizer": registry_serializer(registry=OPTIMIZERS, component="OptimizerOption", required=False)},
    help="Training options laid over the deployment's (those left out keep the deployment's values).")


class DeploymentCreateInputSerializer(BodyInputSerializer):
    name = serializers.RegexField(NAME_RE.pattern, max_length=NAME_MAX_LENGTH)
    source = DeploymentSourceSerializer()
    detector = registry_serializer(registry=DETECTORS, component="DetectorOption", fields={"preprocess": _preprocess()},
                                   required=False, allow_null=True,
                                   help_text="A name from /api/detectors/ with its parameters (default mmd).")
    update = DeploymentUpdateOptionsSerializer(required=False, allow_null=True)


class PredictInputSerializer(BodyInputSerializer):
    unknown_key_sentence = "Unknown key '{key}'; predict takes only inputs."

    inputs = serializers.ListField(help_text="Rows of numbers, each with the model's input size "
                                   f"(at most {settings.MAX_BATCH_ROWS:,} rows).")


class PredictOutputSerializer(serializers.Serializer):
    predictions = serializers.ListField(child=serializers.IntegerField())
    model_version = serializers.IntegerField()


class IngestInputSerializer(BodyInputSerializer):
    unknown_key_sentence = "Unknown key '{key}'; ingest takes inputs and labels."

    inputs = serializers.ListField(help_text="Rows of numbers, each with the model's input size "
                                   f"(at most {settings.MAX_BATCH_ROWS:,} rows).")
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


class UpdateRequestInputSerializer(BodyInputSerializer):
    strategy = _update_strategy()
    training = TrainingOverrideSerializer(required=False)


class RollbackInputSerializer(BodyInputSerializer):
    version = serializers.IntegerField(min_value=1)
