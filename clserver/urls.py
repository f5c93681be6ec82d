"""REST routes of the CL server under /api/."""
from django.urls import path

from clserver import api

urlpatterns = [
    path("experiments/", api.ExperimentListApi.as_view(), name="experiment-list"),
    path("experiments/<str:exp_name>", api.ExperimentDetailApi.as_view(), name="experiment-detail"),
    path("experiments/<str:exp_name>/cancel", api.ExperimentCancelApi.as_view(), name="experiment-cancel"),
    path("experiments/<str:exp_name>/events", api.ExperimentEventsApi.as_view(), name="experiment-events"),
    path("experiments/<str:exp_name>/model", api.ExperimentModelDownloadApi.as_view(), name="experiment-model"),
    path("strategies/", api.StrategyListApi.as_view(), name="strategy-list"),
    path("optimizers/", api.OptimizerListApi.as_view(), name="optimizer-list"),
    path("benchmarks/", api.BenchmarkListApi.as_view(), name="benchmark-list"),
    path("datasets/", api.DatasetListApi.as_view(), name="dataset-list"),
    path("datasets/<str:name>", api.DatasetDetailApi.as_view(), name="dataset-detail"),
]
