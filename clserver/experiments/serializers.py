"""Input and output serializers of the CL server API.

A request body's values are validated by the services (options.options_validate and the Params
and registries), which answer one sentence naming the field; the input serializers check the body
as a whole (BodyInputSerializer) and are generated from those same declarations, so the schema
documents exactly what is checked.
"""
from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from claas_site.errors import InvalidInput
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
from clserver.experiments.selectors import text_paths_hidden
from clserver.models import NAME_MAX_LENGTH, Experiment, JobStatus
from clserver.training.benchmarks import BENCHMARKS
from clserver.training.strategies import OPTIMIZERS, STRATEGIES
from modelfactory.architectures import ARCHITECTURES


# A request body checked as a whole: a JSON object, with only the declared keys when
# `unknown_key_sentence` is set. Its values are the service's to check (one sentence naming the
# field, and no per-value pass over a 10,000-row batch), so `validated_data` is the body itself.
# (A comment, not a docstring: the schema would show a docstring on every request body.)
class BodyInputSerializer(serializers.Serializer):
    # "... '{key}' ..." names the first unknown key (sorted); None leaves unknown keys to the service.
    unknown_key_sentence: str | None = None

    def run_validation(self, data: Any = empty) -> Any:
        if not isinstance(data, dict):
            raise InvalidInput("The request body must be a JSON object.")
        if self.unknown_key_sentence is not None:
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise InvalidInput(self.unknown_key_sentence.format(key=unknown[0]))
        return data


# Renders a document (a dict): its declared fields as declared, and any other key it holds as it is,
# all in the document's own order; for documents built elsewhere (stored results, registry
# descriptions) whose keys a serializer documents but must neither drop nor reorder. (A comment:
# the schema would show a docstring on every serializer that mixes it in.)
class InDocumentOrder:
    def to_representation(self, document: dict[str, Any]) -> dict[str, Any]:
        declared = super().to_representation(document)  # type: ignore[misc]
        return {key: declared[key] if key in declared else value for key, value in document.items()}


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


class ExperimentSetupInputSerializer(BodyInputSerializer):
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
    exp_name = serializers.CharField(source="name")
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress = serializers.SerializerMethodField()
    experience = serializers.IntegerField(help_text="Experience being trained (0-based).")
    epoch = serializers.IntegerField(help_text="Epochs finished in the current experience.")
    n_experiences = serializers.IntegerField(source="options.benchmark.n_experiences", allow_null=True)
    epochs = serializers.IntegerField(source="options.training.epochs", allow_null=True)
    attempts = serializers.IntegerField()
    error = serializers.SerializerMethodField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_progress(self, experiment: Experiment) -> float:
        return round(experiment.progress, 4)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_error(self, experiment: Experiment) -> str | None:
        return text_paths_hidden(experiment.error) or None


class ExperimentResultsSerializer(InDocumentOrder, serializers.Serializer):
    """The results: the keys below, and any other key the stored results hold (e.g. mlflow_models),
    in the stored order."""

    exp_name = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    config = serializers.DictField(help_text="The experiment's options.")
    metrics = serializers.DictField()
    experiences = serializers.ListField(child=serializers.DictField())
    cost = serializers.DictField()
    model = serializers.DictField(allow_null=True)
    mlflow = serializers.DictField(allow_null=True)
    progress = serializers.FloatField()
    error = serializers.CharField(required=False)


class EventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.CharField()
    time = serializers.DateTimeField()

