"""Serializers shared by the apps: registry entries with their parameter schemas."""
from __future__ import annotations

from rest_framework import serializers


class ParamSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["int", "float", "bool", "str", "int_list"])
    default = serializers.JSONField(allow_null=True)
    help = serializers.CharField(allow_blank=True)
    min = serializers.FloatField(required=False)
    max = serializers.FloatField(required=False)
    choices = serializers.ListField(child=serializers.JSONField(), required=False)
    nullable = serializers.BooleanField(required=False)


class RegistryEntrySerializer(serializers.Serializer):
    """One entry of a registry (strategy, benchmark, architecture, optimizer, detector)."""

    name = serializers.CharField()
    help = serializers.CharField(allow_blank=True)
    params = ParamSerializer(many=True)
