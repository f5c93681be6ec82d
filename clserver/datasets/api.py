"""REST API of uploaded datasets: one thin class per action."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clserver.datasets import selectors, services
from clserver.datasets.serializers import DatasetOutputSerializer, DatasetUploadInputSerializer

ERRORS = {code: OpenApiResponse(description="{\"error\": \"...\", \"details\": {...}}")
          for code in (400, 401, 403, 404, 409)}


class DatasetListApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(summary="Your datasets.", responses={200: DatasetOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(DatasetOutputSerializer(selectors.dataset_list(owner=request.user), many=True).data)

    @extend_schema(summary="Upload a dataset: NPZ with x and y, CSV or Parquet with a label column, "
                           "or a zip of images in class folders.",
                   request={"multipart/form-data": DatasetUploadInputSerializer},
                   responses={201: DatasetOutputSerializer, **ERRORS, 413: ERRORS[400]})
    def post(self, request: Request) -> Response:
        serializer = DatasetUploadInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        dataset = services.dataset_create(owner=request.user, **serializer.validated_data)
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema(summary="One dataset.", responses={200: DatasetOutputSerializer, **ERRORS})
    def get(self, request: Request, name: str) -> Response:
        return Response(DatasetOutputSerializer(selectors.dataset_get(owner=request.user, name=name)).data)

    @extend_schema(summary="Delete a dataset no experiment is using.", responses={204: None, **ERRORS})
    def delete(self, request: Request, name: str) -> Response:
        services.dataset_delete(owner=request.user, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)
