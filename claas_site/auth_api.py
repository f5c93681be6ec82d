"""API tokens: a user replaces their token with a new one; the old one stops working at once."""
from __future__ import annotations

from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as `Authorization: Token <token>`.")
    created = serializers.DateTimeField()


def token_rotate(*, user: Any) -> Token:
    """Delete the user's token (if any) and issue a fresh one, in one transaction."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user)


class TokenRotateApi(APIView):
    @extend_schema(summary="Replace your API token: the new one is returned once, the old one stops working.",
                   request=None,
                   responses={201: TokenOutputSerializer,
                              401: OpenApiResponse(description="{\"error\": \"...\", \"details\": {...}}")})
    def post(self, request: Request) -> Response:
        token = token_rotate(user=request.user)
        body = TokenOutputSerializer({"token": token.key, "created": token.created}).data
        return Response(body, status=status.HTTP_201_CREATED)
