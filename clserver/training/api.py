"""REST API of the training registries: strategies, optimizers and benchmarks with their parameters."""
from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from claas_site.serializers import ParamSerializer, RegistryEntrySerializer
from clserver.experiments.serializers import InDocumentOrder
from clserver.training.benchmarks import BENCHMARKS
from clserver.training.strategies import OPTIMIZERS, STRATEGIES


class BoundField(serializers.FloatField):
    """A bound as the parameter declares it: an integer parameter's bounds stay integers."""

    def to_representation(self, value: Any) -> Any:
        return value


# The registries' descriptions, in their order and with every key they hold (e.g. a strategy's family).
class ListedParamSerializer(InDocumentOrder, ParamSerializer):
    min = BoundField(required=False)
    max = BoundField(required=False)


class ListedEntrySerializer(InDocumentOrder, RegistryEntrySerializer):
    params = ListedParamSerializer(many=True)


class StrategyEntrySerializer(ListedEntrySerializer):
    # Not required: an entry registered without one is listed without it, as the registry holds it.
    family = serializers.CharField(required=False, help_text="baseline, rehearsal or regularization.")
    memory = serializers.BooleanField(required=False, help_text="Present (true) when it keeps a replay memory.")
    offline = serializers.BooleanField(required=False,
                                       help_text="Present (true) when it trains once on the whole stream.")


class BenchmarkEntrySerializer(ListedEntrySerializer):
    kind = serializers.CharField(required=False,
                                 help_text="class_incremental, domain_incremental, torchvision or user_dataset.")


class StrategyListApi(APIView):
    @extend_schema(summary="Strategies with their parameters and defaults.",
                   responses={200: StrategyEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(StrategyEntrySerializer(STRATEGIES.describe(), many=True).data)


class OptimizerListApi(APIView):
    @extend_schema(summary="Optimizers with their parameters and defaults.",
                   responses={200: ListedEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(ListedEntrySerializer(OPTIMIZERS.describe(), many=True).data)


class BenchmarkListApi(APIView):
    @extend_schema(summary="Benchmarks with their parameters and defaults.",
                   responses={200: BenchmarkEntrySerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(BenchmarkEntrySerializer(BENCHMARKS.describe(), many=True).data)
