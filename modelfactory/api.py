"""REST API of the model factory: one thin class per action."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from modelfactory.architectures import ARCHITECTURES


class ArchitectureListApi(APIView):
    @extend_schema(summary="The architecture zoo with each architecture's parameters and defaults.")
    def get(self, request: Request) -> Response:
        return Response(ARCHITECTURES.describe())
