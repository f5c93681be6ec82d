"""Websocket routes of every app."""
from django.urls import path

from clserver import consumers, deployment_consumers

websocket_urlpatterns = [
    path("ws/experiments/<str:username>/<str:exp_name>/", consumers.ExperimentConsumer.as_asgi()),
    path("ws/deployments/<str:username>/<str:name>/", deployment_consumers.DeploymentConsumer.as_asgi()),
]
