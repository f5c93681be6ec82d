"""REST routes of the CL server under /api/."""
from django.urls import path

from clserver.datasets import api as datasets
from clserver.experiments import api
from clserver.deployments import api as dep
from clserver.deployments.downloads import DeploymentVersionDownloadApi
from clserver.training import api as training

urlpatterns = [
    path("experiments/", api.ExperimentListApi.as_view(), name="experiment-list"),
    path("experiments/<str:exp_name>", api.ExperimentDetailApi.as_view(), name="experiment-detail"),
    path("experiments/<str:exp_name>/cancel", api.ExperimentCancelApi.as_view(), name="experiment-cancel"),
    path("experiments/<str:exp_name>/events", api.ExperimentEventsApi.as_view(), name="experiment-events"),
    path("experiments/<str:exp_name>/model", api.ExperimentModelDownloadApi.as_view(), name="experiment-model"),
    path("strategies/", training.StrategyListApi.as_view(), name="strategy-list"),
    path("optimizers/", training.OptimizerListApi.as_view(), name="optimizer-list"),
    path("benchmarks/", training.BenchmarkListApi.as_view(), name="benchmark-list"),
    path("datasets/", datasets.DatasetListApi.as_view(), name="dataset-list"),
    path("datasets/<str:name>", datasets.DatasetDetailApi.as_view(), name="dataset-detail"),
    path("detectors/", dep.DetectorListApi.as_view(), name="detector-list"),
    path("deployments/", dep.DeploymentListApi.as_view(), name="deployment-list"),
    path("deployments/<str:name>", dep.DeploymentDetailApi.as_view(), name="deployment-detail"),
    path("deployments/<str:name>/predict", dep.DeploymentPredictApi.as_view(), name="deployment-predict"),
    path("deployments/<str:name>/ingest", dep.DeploymentIngestApi.as_view(), name="deployment-ingest"),
    path("deployments/<str:name>/update", dep.DeploymentUpdateApi.as_view(), name="deployment-update"),
    path("deployments/<str:name>/updates/<int:update_id>/cancel", dep.DeploymentUpdateCancelApi.as_view(),
         name="deployment-update-cancel"),
    path("deployments/<str:name>/versions/<int:version>/download", DeploymentVersionDownloadApi.as_view(),
         name="deployment-version-download"),
    path("deployments/<str:name>/rollback", dep.DeploymentRollbackApi.as_view(), name="deployment-rollback"),
    path("deployments/<str:name>/events", dep.DeploymentEventsApi.as_view(), name="deployment-events"),
]
