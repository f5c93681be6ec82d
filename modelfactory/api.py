"""REST API of the model factory: one thin class per action."""
from __future__ import annotations

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from claas_site.negotiation import FormatIsNotARenderer
from claas_site.errors import InvalidInput, PayloadTooLarge
from claas_site.serializers import RegistryEntrySerializer
from modelfactory import selectors, services
from modelfactory.architectures import ARCHITECTURES
from modelfactory.exports import DOWNLOAD_FORMATS
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


def fields_check(request: Request, serializer: Serializer) -> None:
    """Refuse fields the form does not define: weights sent as `weights` instead of `file` are not ignored."""
    if not hasattr(request.data, "keys"):
        return  # not an object: the serializer says so
    unknown = sorted(str(k) for k in request.data.keys() if k not in serializer.fields)
    if unknown:
        names = ", ".join(f"'{k[:50]}'" for k in unknown[:10])
        raise InvalidInput(f"Unknown field{'s' if len(unknown) > 1 else ''} {names}; the fields are: "
                           f"{', '.join(serializer.fields)}.", details={"unknown": [k[:50] for k in unknown[:10]]})


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
                    "form (params as a JSON string) may carry a `file`: a state_dict saved with "
                    "torch.save(model.state_dict(), path). TorchScript archives and pickled models are refused "
                    "(they hold programs, which are never run); other fields answer 400.",
        request={"application/json": RegisteredModelCreateInputSerializer,
                 "multipart/form-data": RegisteredModelCreateInputSerializer},
        responses={201: RegisteredModelCreatedSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        request_size_check(request)
        serializer = RegisteredModelCreateInputSerializer(data=request.data)
        fields_check(request, serializer)
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

    @extend_schema(summary="Upload new weights as the next version: a state_dict saved with torch.save "
                           "(TorchScript archives are refused).",
                   request={"multipart/form-data": ModelVersionUploadInputSerializer},
                   responses={201: ModelVersionCreatedSerializer, **ERRORS})
    def post(self, request: Request, name: str) -> Response:
        request_size_check(request)
        serializer = ModelVersionUploadInputSerializer(data=request.data)
        fields_check(request, serializer)
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


class ModelVersionDownloadApi(APIView):
    content_negotiation_class = FormatIsNotARenderer

    @extend_schema(
        summary="Download a version: its state_dict (torch.load(..., weights_only=True)), a torch.export program "
                "(torch.export.load(path).module()) or TorchScript (torch.jit.load).",
        parameters=[OpenApiParameter("format", OpenApiTypes.STR, enum=list(DOWNLOAD_FORMATS),
                                     default="state_dict",
                                     description="state_dict, pt2 (torch.export, any batch size) or torchscript "
                                                 "(traced; not for uploaded programs).")],
        responses={(200, "application/octet-stream"): OpenApiResponse(description="weights file"), **ERRORS},
    )
    def get(self, request: Request, name: str, version: int) -> FileResponse:
        found = selectors.model_version_get(owner=request.user, name=name, version=version)
        path, filename = services.model_version_export(version=found,
                                                       format=request.query_params.get("format", "state_dict"))
        # FileResponse streams the file in blocks; no request holds a whole archive in memory.
        return FileResponse(open(path, "rb"), as_attachment=True, filename=filename,
                            content_type="application/octet-stream")
