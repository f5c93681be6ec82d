"""Input and output serializers of the CL server API (shapes for the OpenAPI schema).

The setup body is validated by options.options_validate; its serializer here is generated from
the same Params and registries, so the schema documents exactly what is checked.
"""
from __future__ import annotations

import json

from rest_framework import serializers

from claas_site.serializers import param_field, params_serializer, registry_serializer
from clserver.experiments.options import (
    DEFAULT_BENCHMARK,
    DEFAULT_MODEL,
    DEFAULT_OPTIMIZER,
    DEFAULT_STRATEGY,
    NAME_RE,
    OVERWRITE,
    TRAINING_PARAMS,
)
from clserver.models import NAME_MAX_LENGTH, Experiment, JobStatus
from clserver.training.benchmarks import BENCHMARKS
from clserver.training.strategies import OPTIMIZERS, STRATEGIES
from modelfactory.architectures import ARCHITECTURES


class ModelOptionSerializer(serializers.Serializer):
    architecture = serializers.ChoiceField(choices=ARCHITECTURES.names(), required=False,
                                           default=DEFAULT_MODEL["architecture"],
                                           help_text="A name from /api/architectures/.")
    params = serializers.DictField(required=False, help_text="The architecture's parameters (/api/architectures/); "
                                   "input_shape and num_classes follow the benchmark unless given.")
    registered = serializers.CharField(required=False, help_text="A registered model's name (instead of architecture).")
    version = serializers.IntegerField(required=False, min_value=1, help_text="Its version (default: latest).")


# Generated from the declarations that validate them (options.py and the registries): they cannot drift.
TrainingOptionSerializer = params_serializer(
    component="TrainingOption", params=TRAINING_PARAMS,
    fields={"optimizer": registry_serializer(registry=OPTIMIZERS, component="OptimizerOption", required=False,
                                             help_text="A name from /api/optimizers/ with its parameters "
                                             f"(default {DEFAULT_OPTIMIZER}).")})


def _default(value: dict) -> str:
    return f"Default: {json.dumps(value)}."


class ExperimentSetupInputSerializer(serializers.Serializer):
    exp_name = serializers.RegexField(NAME_RE.pattern, max_length=NAME_MAX_LENGTH)
    model = ModelOptionSerializer(required=False, allow_null=True, help_text=_default(DEFAULT_MODEL))
    benchmark = registry_serializer(registry=BENCHMARKS, component="BenchmarkOption", required=False,
                                    help_text=f"A name from /api/benchmarks/ with its parameters. "
                                    f"{_default(DEFAULT_BENCHMARK)}")
    strategy = registry_serializer(registry=STRATEGIES, component="StrategyOption", nested="params", required=False,
                                   help_text=f"A name from /api/strategies/ with its params. "
                                   f"{_default(DEFAULT_STRATEGY)}")
    training = TrainingOptionSerializer(required=False, allow_null=True)
    from_experiment = serializers.RegexField(NAME_RE.pattern, max_length=NAME_MAX_LENGTH, required=False,
                                             allow_null=True, help_text="A completed experiment of yours to "
                                             "continue (its model and strategy state); leave model out.")
    overwrite = param_field(param=OVERWRITE)


class ExperimentOutputSerializer(serializers.ModelSerializer):
    exp_name = serializers.CharField(source="name")
    username = serializers.CharField(source="owner.username")
    status = serializers.ChoiceField(choices=JobStatus.choices)
    urls = serializers.SerializerMethodField()

    class Meta:
        model = Experiment
        fields = ["exp_name", "username", "status", "options", "progress", "experience", "epoch", "error",
                  "attempts", "created_at", "queued_at", "started_at", "finished_at", "urls"]

    def get_urls(self, obj: Experiment) -> dict[str, str]:
        user = obj.owner.username
        return {
            "exec": f"/base-scenario/{user}/exec/{obj.name}",
            "status": f"/base-scenario/{user}/status/{obj.name}",
            "results": f"/base-scenario/{user}/results/{obj.name}",
            "events": f"/api/experiments/{obj.name}/events",
            "websocket": f"/ws/experiments/{user}/{obj.name}/",
        }


class ExperimentStatusSerializer(serializers.Serializer):
    exp_name = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress = serializers.FloatField()
    experience = serializers.IntegerField()
    epoch = serializers.IntegerField()
    n_experiences = serializers.IntegerField(allow_null=True)
    epochs = serializers.IntegerField(allow_null=True)
    attempts = serializers.IntegerField()
    error = serializers.CharField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class ExperimentResultsSerializer(serializers.Serializer):
    exp_name = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress = serializers.FloatField()
    config = serializers.DictField()
    metrics = serializers.DictField()
    experiences = serializers.ListField(child=serializers.DictField())
    cost = serializers.DictField()
    model = serializers.DictField(allow_null=True)
    mlflow = serializers.DictField(allow_null=True)
    error = serializers.CharField(required=False)


class EventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.CharField()
    time = serializers.DateTimeField()

