"""The seed's base-scenario routes (paths fixed by the contract)."""
from django.urls import path

from clserver.experiments import api

urlpatterns = [
    path("setup/", api.ExperimentSetupApi.as_view(), name="base-setup"),
    path("<str:username>/exec/<str:exp_name>", api.ExperimentExecApi.as_view(), name="base-exec"),
    path("<str:username>/results/<str:exp_name>", api.ExperimentResultsApi.as_view(), name="base-results"),
    path("<str:username>/status/<str:exp_name>", api.ExperimentStatusApi.as_view(), name="base-status"),
]
