"""One error format for every 4xx: {"error": "<one sentence>", "details": {...}}."""
from __future__ import annotations

import logging
import os
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """A failure a user can act on; services raise it, the API renders it."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if status_code is not None:
            self.status_code = status_code


class InvalidInput(ApplicationError):
    status_code = status.HTTP_400_BAD_REQUEST


class NotFound(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND


class Forbidden(ApplicationError):
    status_code = status.HTTP_403_FORBIDDEN


class Conflict(ApplicationError):
    status_code = status.HTTP_409_CONFLICT


class PayloadTooLarge(ApplicationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class QuotaExceeded(ApplicationError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS


def _first_message(detail: Any, path: str = "") -> str:
    """Turn DRF's nested error detail into one readable sentence naming the field."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = key if not path else f"{path}.{key}"
            if key in ("non_field_errors", "__all__"):
                sub = path
            return _first_message(value, sub)
        return "The request is invalid."
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)) and not isinstance(value, str):
                return _first_message(value, f"{path}[{index}]" if path else str(index))
            return _first_message(value, path)
        return "The request is invalid."
    text = str(detail).strip()
    if not text.endswith((".", "?", "!")):
        text += "."
    return f"{path}: {text}" if path else text


def _details(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict):
        return {str(k): _plain(v) for k, v in detail.items()}
    return {}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value)


def error_body(message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": message, "details": details or {}}


JSON_DECODER_FILE = os.path.join("json", "decoder.py")
TOO_DEEP = "The JSON is nested too deeply to read; send a flatter document."


def _raised_decoding_json(exc: BaseException) -> bool:
    """Whether the exception came out of the json module's decoder (not out of a bug elsewhere)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(JSON_DECODER_FILE):
            return True
        tb = tb.tb_next
    return False


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, RecursionError) and _raised_decoding_json(exc):
        # A body (or a JSON form field) nested deeper than Python's recursion limit: the input's fault.
        logger.warning("refused JSON nested too deeply to decode")
        return Response(error_body(TOO_DEEP), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    if isinstance(exc, exceptions.ValidationError):
        message = _first_message(detail)
    elif isinstance(exc, exceptions.NotAuthenticated):
        message = "Authentication credentials were not provided."
    elif isinstance(exc, exceptions.AuthenticationFailed):
        message = "The token or session is not valid."
    elif isinstance(exc, exceptions.Throttled):
        wait = getattr(exc, "wait", None)
        message = "Too many requests; try again" + (f" in {int(wait) + 1} s." if wait else " later.")
    else:
        message = _first_message(detail)
    response.data = error_body(message, _details(detail) if isinstance(exc, exceptions.ValidationError) else {})
    return response


# --- Django's handlers for what never reaches a DRF view (claas_site/urls.py) --------------------
API_PREFIXES = ("/api/", "/base-scenario/")


def not_found(request: Any, exception: Exception | None = None) -> Any:
    """An unknown URL: JSON in the error format under the API's prefixes, Django's page elsewhere."""
    from django.http import JsonResponse
    from django.views import defaults

    if request.path.startswith(API_PREFIXES):
        return JsonResponse(error_body(f"There is no API endpoint at {request.path}; see /api/docs/."), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: Any) -> Any:
    """An unhandled failure: logged with its trace by Django; the user gets one sentence, never the trace."""
    from django.http import JsonResponse
    from django.views import defaults

    if request.path.startswith(API_PREFIXES):
        return JsonResponse(error_body("The server failed to answer this request; the failure is logged."),
                            status=500)
    return defaults.server_error(request)


def _bad_request_message(exception: Exception | None) -> tuple[str, int]:
    from django.conf import settings
    from django.core.exceptions import DisallowedHost, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent

    if isinstance(exception, DisallowedHost):
        return "The Host header names a host this server does not answer to.", 400
    if isinstance(exception, TooManyFieldsSent):
        return (f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} form fields; "
                "send fewer."), 400
    if isinstance(exception, TooManyFilesSent):
        return f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files; send fewer.", 400
    if isinstance(exception, RequestDataTooBig):
        return "The request's form fields are larger than the server accepts.", 413
    return "The request is malformed.", 400


def bad_request(request: Any, exception: Exception | None = None) -> Any:
    """A request Django refuses before any view (bad Host, too many form fields or files, a broken
    multipart body): JSON in the error format under the API's prefixes, Django's page elsewhere."""
    from django.http import JsonResponse
    from django.views import defaults

    if request.path.startswith(API_PREFIXES):
        message, code = _bad_request_message(exception)
        return JsonResponse(error_body(message), status=code)
    return defaults.bad_request(request, exception)
