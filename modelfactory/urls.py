"""REST routes of the model factory under /api/."""
from django.urls import path

from modelfactory import api

urlpatterns = [
    path("architectures/", api.ArchitectureListApi.as_view(), name="architecture-list"),
]
