"""Input and output serializers of the CL server API (shapes for the OpenAPI schema)."""
from __future__ import annotations

from rest_framework import serializers

from clserver.models import Dataset, Experiment, JobStatus


class ModelOptionSerializer(serializers.Serializer):
    architecture = serializers.CharField(required=False, help_text="A name from /api/architectures/.")
    params = serializers.DictField(required=False)
    registered = serializers.CharField(required=False, help_text="A registered model's name (instead of architecture).")
    version = serializers.IntegerField(required=False, min_value=1)


class BenchmarkOptionSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="A name from /api/benchmarks/; other keys are its parameters.")


class StrategyOptionSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="A name from /api/strategies/.")
    params = serializers.DictField(required=False)


class OptimizerOptionSerializer(serializers.Serializer):
    name = serializers.ChoiceField(choices=["sgd", "adam", "adamw"])
    lr = serializers.FloatField(required=False)
    momentum = serializers.FloatField(required=False)
    weight_decay = serializers.FloatField(required=False)


class TrainingOptionSerializer(serializers.Serializer):
    epochs = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    train_mb_size = serializers.IntegerField(required=False, min_value=1)
    eval_mb_size = serializers.IntegerField(required=False, min_value=1)
    optimizer = OptimizerOptionSerializer(required=False)
    device = serializers.CharField(required=False)
    seed = serializers.IntegerField(required=False, min_value=0)


class ExperimentSetupInputSerializer(serializers.Serializer):
    exp_name = serializers.RegexField(r"^[A-Za-z0-9_.-]+$", max_length=100)
    model = ModelOptionSerializer(required=False)
    benchmark = BenchmarkOptionSerializer(required=False)
    strategy = StrategyOptionSerializer(required=False)
    training = TrainingOptionSerializer(required=False)
    from_experiment = serializers.CharField(required=False, allow_null=True)
    overwrite = serializers.BooleanField(required=False, default=False)


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


class DatasetOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["name", "original_format", "n_samples", "n_features", "classes", "size_bytes", "created_at"]


class DatasetUploadInputSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[A-Za-z0-9_.-]+$", max_length=100)
    file = serializers.FileField(help_text="NPZ with arrays x and y, or CSV with a header and a label column.")
    label_column = serializers.CharField(required=False, default="label",
                                         help_text="CSV only: the column holding the integer class label.")
