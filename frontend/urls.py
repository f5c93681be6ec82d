"""Page routes of the web GUI."""
from django.urls import path

from frontend import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("setup/", views.experiment_new, name="experiment-new"),
    path("experiments/<str:exp_name>/", views.experiment_detail, name="experiment-page"),
    path("compare/", views.compare, name="compare"),
    path("models/", views.models, name="models"),
    path("models/<str:name>/", views.model_detail, name="model-page"),
    path("deployments/", views.deployments, name="deployments"),
    path("deployments/<str:name>/", views.deployment_detail, name="deployment-page"),
]
