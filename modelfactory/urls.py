"""REST routes of the model factory under /api/."""
from django.urls import path

from modelfactory import api

urlpatterns = [
    path("architectures/", api.ArchitectureListApi.as_view(), name="architecture-list"),
    path("models/", api.RegisteredModelListApi.as_view(), name="model-list"),
    path("models/<str:name>", api.RegisteredModelDetailApi.as_view(), name="model-detail"),
    path("models/<str:name>/versions/", api.ModelVersionListApi.as_view(), name="model-version-list"),
    path("models/<str:name>/versions/<int:version>", api.ModelVersionDetailApi.as_view(), name="model-version-detail"),
    path("models/<str:name>/versions/<int:version>/download", api.ModelVersionDownloadApi.as_view(),
         name="model-version-download"),
]
