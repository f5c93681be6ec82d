"""REST API of the model factory: one thin class per action."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from claas_site.errors import PayloadTooLarge
from claas_site.serializers import RegistryEntrySerializer
from modelfactory import selectors, services
from modelfactory.architectures import ARCHITECTURES
from modelfactory.serializers import (
    ModelVersionCreatedSerializer,
    ModelVersionOutputSerializer,
    ModelVersionUploadInputSerializer,
    RegisteredModelCreatedSerializer,
    RegisteredModelCreateInputSerializer,
    RegisteredModelOutputSerializer,
)

ERRORS = {code: OpenApiResponse(description="{\"error\": \"...\", \"details\": {...}}")
          for code in (400, 401, 403, 404, 409, 413)}


def request_size_check(request: Request) -> None:
    """Refuse an oversized upload from its Content-Length, before the body is read.

    Besides the file a form holds only small fields, bounded by DATA_UPLOAD_MAX_MEMORY_SIZE.
    """
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    limit = settings.MAX_UPLOAD_BYTES
    if length > limit + settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        raise PayloadTooLarge(f"The request is {length} bytes; files may have at most {limit} bytes.",
                              details={"size_bytes": length, "limit_bytes": limit})


class ArchitectureListApi(APIView):
    @extend_schema(summary="The architecture zoo with each architecture's parameters and defaults.",
                   responses={200: RegistryEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(ARCHITECTURES.describe())


class RegisteredModelListApi(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(summary="Your registered models with their versions.",
                   responses={200: RegisteredModelOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        models = selectors.registered_model_list(owner=request.user).select_related("owner")
        return Response(RegisteredModelOutputSerializer(models, many=True).data)

    @extend_schema(
        summary="Register a model: an architecture with its parameters and optional initial weights.",
        description="JSON without a file makes version 1 a fresh initialisation seeded by `seed`; a multipart "
                    "form (params as a JSON string) may carry a `file`: a state_dict saved with torch.save or a "
                    "TorchScript archive. Pickled models are refused.",
        request={"application/json": RegisteredModelCreateInputSerializer,
                 "multipart/form-data": RegisteredModelCreateInputSerializer},
        responses={201: RegisteredModelCreatedSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        request_size_check(request)
        serializer = RegisteredModelCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = services.registered_model_create(owner=request.user, **serializer.validated_data)
        body = RegisteredModelOutputSerializer(created.version.model).data
        return Response({**body, "mlflow_error": created.mlflow_error}, status=status.HTTP_201_CREATED)


class RegisteredModelDetailApi(APIView):
    @extend_schema(summary="One registered model with its versions.",
                   responses={200: RegisteredModelOutputSerializer, **ERRORS})
    def get(self, request: Request, name: str) -> Response:
        model = selectors.registered_model_get(owner=request.user, name=name)
        return Response(RegisteredModelOutputSerializer(model).data)

    @extend_schema(summary="Delete a model and its versions (refused while an experiment or deployment uses it).",
                   responses={204: None, **ERRORS})
    def delete(self, request: Request, name: str) -> Response:
        services.registered_model_delete(owner=request.user, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionListApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(summary="The versions of a registered model.",
                   responses={200: ModelVersionOutputSerializer(many=True), **ERRORS})
    def get(self, request: Request, name: str) -> Response:
        model = selectors.registered_model_get(owner=request.user, name=name)
        return Response(ModelVersionOutputSerializer(model.versions.all(), many=True).data)

    @extend_schema(summary="Upload new weights as the next version (state_dict or TorchScript archive).",
                   request={"multipart/form-data": ModelVersionUploadInputSerializer},
                   responses={201: ModelVersionCreatedSerializer, **ERRORS})
    def post(self, request: Request, name: str) -> Response:
        request_size_check(request)
        serializer = ModelVersionUploadInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = services.model_version_create(owner=request.user, name=name, **serializer.validated_data)
        body = ModelVersionOutputSerializer(created.version).data
        return Response({**body, "mlflow_error": created.mlflow_error}, status=status.HTTP_201_CREATED)


class ModelVersionDetailApi(APIView):
    @extend_schema(summary="One version of a registered model.",
                   responses={200: ModelVersionOutputSerializer, **ERRORS})
    def get(self, request: Request, name: str, version: int) -> Response:
        found = selectors.model_version_get(owner=request.user, name=name, version=version)
        return Response(ModelVersionOutputSerializer(found).data)


class FormatIsNotARenderer(DefaultContentNegotiation):
    """`?format=` names the download format here, not DRF's renderer; errors stay JSON."""

    def select_renderer(self, request: Request, renderers: list, format_suffix: str | None = None) -> tuple:
        return renderers[0], renderers[0].media_type


class ModelVersionDownloadApi(APIView):
    content_negotiation_class = FormatIsNotARenderer

    @extend_schema(
        summary="Download a version's weights: a state_dict (torch.load(..., weights_only=True)) or TorchScript.",
        parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=list(selectors.DOWNLOAD_FORMATS),
                                     default="state_dict", description="state_dict or torchscript (traced).")],
        responses={(200, "application/octet-stream"): OpenApiResponse(description="weights file"), **ERRORS},
    )
    def get(self, request: Request, name: str, version: int) -> HttpResponse:
        found = selectors.model_version_get(owner=request.user, name=name, version=version)
        content, filename = selectors.model_version_download(
            version=found, format=request.query_params.get("format", "state_dict"))
        if isinstance(content, Path):
            return FileResponse(open(content, "rb"), as_attachment=True, filename=filename,
                                content_type="application/octet-stream")
        response = HttpResponse(content, content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
