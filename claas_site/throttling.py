"""Throttling of the API: a rate per user for writes (POST, PUT, PATCH, DELETE); reads are free."""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

# Writes that change nothing stored get a scope of their own (serving traffic is not editing).
SCOPE_BY_URL_NAME = {"deployment-predict": "predict"}
WRITE_SCOPE = "writes"


class WriteRateThrottle(SimpleRateThrottle):
    """One throttle for the whole API, set in REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"].

    The scope is chosen per request and its rate read at request time from
    REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], so a changed setting takes effect at once.
    A refused request answers 429 "Too many requests; try again in N s." (claas_site/errors.py).
    """

    def __init__(self) -> None:
        # The scope depends on the request, so the rate is resolved in allow_request().
        self.rate = None
        self.num_requests, self.duration = None, None

    @staticmethod
    def scope_of(request: Request) -> str | None:
        if request.method in SAFE_METHODS:
            return None
        match = getattr(request, "resolver_match", None)
        return SCOPE_BY_URL_NAME.get(getattr(match, "url_name", None), WRITE_SCOPE)

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view: Any) -> bool:
        self.scope = self.scope_of(request)
        if self.scope is None:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str:
        user = request.user
        if user is not None and user.is_authenticated:
            # A user deleted and created again under the same id starts with a fresh count.
            joined = getattr(user, "date_joined", None)
            ident = f"{user.pk}.{int(joined.timestamp() * 1e6)}" if joined else str(user.pk)
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
