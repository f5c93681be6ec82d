"""REST API of the training registries: strategies, optimizers and benchmarks with their parameters."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from claas_site.serializers import RegistryEntrySerializer
from clserver.training.benchmarks import BENCHMARKS
from clserver.training.strategies import OPTIMIZERS, STRATEGIES


class StrategyListApi(APIView):
    @extend_schema(summary="Strategies with their parameters and defaults.",
                   responses={200: RegistryEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(STRATEGIES.describe())


class OptimizerListApi(APIView):
    @extend_schema(summary="Optimizers with their parameters and defaults.",
                   responses={200: RegistryEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(OPTIMIZERS.describe())


class BenchmarkListApi(APIView):
    @extend_schema(summary="Benchmarks with their parameters and defaults.",
                   responses={200: RegistryEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(BENCHMARKS.describe())
