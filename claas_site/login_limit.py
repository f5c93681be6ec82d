"""Password sign-ins are limited per username and per client address; a locked sign-in answers 429.

Every password check (the GUI's /accounts/login/, the admin's sign-in, any later caller of
django.contrib.auth.authenticate) goes through `LoginLimitedBackend`. Each attempt is counted
before the password is checked (cache.incr is atomic, so parallel guesses cannot all slip in under
the limit); a right password clears the username's count and gives back the address's one. Beyond
the limit the attempt is refused, even with the right password, until the window that began with
the first counted attempt ends. Counts live in Django's cache: per process with the default
in-memory cache, shared by every process when a shared cache (Redis) is configured.
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import time
from typing import Any, Callable

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

KEY_PREFIX = "claas:login-attempts"
# Set on the request by the backend when it refused a locked sign-in: the seconds left.
REQUEST_ATTRIBUTE = "claas_login_wait_s"


def _client(address: str) -> str:
    """The client an address stands for: itself, or for IPv6 its /64 (one subscriber's whole block)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def _limits(*, username: str, address: str | None) -> list[tuple[str, str, int, int]]:
    """(kind, cache key, attempts allowed, window in seconds) for each limit that applies."""
    out = []
    by_name = settings.LOGIN_FAILURES_PER_USERNAME
    if by_name is not None:
        # Case-folded: a guess at "Alice" counts against "alice" too; hashed: any text is a safe key.
        digest = hashlib.sha256(username.casefold().encode()).hexdigest()
        out.append(("user", f"{KEY_PREFIX}:user:{digest}", *by_name))
    by_address = settings.LOGIN_FAILURES_PER_ADDRESS
    if by_address is not None and address:
        digest = hashlib.sha256(_client(address).encode()).hexdigest()
        out.append(("address", f"{KEY_PREFIX}:addr:{digest}", *by_address))
    return out


def _count(*, key: str, window_s: int) -> int:
    """Add one attempt to the window at `key` (started now if none is open); the new count."""
    cache.add(f"{key}:until", time.time() + window_s, timeout=window_s)
    cache.add(key, 0, timeout=window_s)
    try:
        return cache.incr(key)
    except ValueError:  # the window ended between add and incr: this attempt opens the next one
        cache.set(key, 1, timeout=window_s)
        return 1


def _seconds_left(*, key: str, window_s: int) -> int:
    until = cache.get(f"{key}:until")
    left = (until - time.time()) if isinstance(until, (int, float)) else window_s
    return max(1, math.ceil(left))


def login_attempt_start(*, username: str, address: str | None) -> int:
    """Count one sign-in attempt; 0 when it may go on, else the seconds until it may."""
    wait = 0
    for _kind, key, allowed, window_s in _limits(username=username, address=address):
        if _count(key=key, window_s=window_s) > allowed:
            wait = max(wait, _seconds_left(key=key, window_s=window_s))
    return wait


def login_attempt_succeeded(*, username: str, address: str | None) -> None:
    """A right password: the username starts afresh, and the address's count gets this attempt back.

    The address is not cleared: one account of their own must not let a client reset the count of
    the guesses it makes at other accounts.
    """
    for kind, key, _allowed, _window_s in _limits(username=username, address=address):
        if kind == "user":
            cache.delete_many([key, f"{key}:until"])
        else:
            try:
                cache.decr(key)
            except ValueError:  # the window has ended meanwhile
                pass


def wait_message(wait_s: int) -> str:
    minutes = math.ceil(wait_s / 60)
    unit = "minute" if minutes == 1 else "minutes"
    return f"Too many failed sign-ins for this account or from your address; try again in {minutes} {unit}."


class LoginLimitedBackend(ModelBackend):
    """Django's username and password check, with the attempt counted first (settings.AUTHENTICATION_BACKENDS)."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> Any:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        address = request.META.get("REMOTE_ADDR") if request is not None else None
        wait = login_attempt_start(username=str(username), address=address)
        if wait:
            if request is not None:
                setattr(request, REQUEST_ATTRIBUTE, wait)
            # authenticate() stops at PermissionDenied: no password is checked, the right one neither.
            raise PermissionDenied
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_attempt_succeeded(username=str(username), address=address)
        return user


class _LockedMessage:
    """Turns the form's "wrong password" into the lock's message when the backend refused a locked sign-in."""

    request: HttpRequest | None
    locked_message: str = ""

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()  # type: ignore[misc]
        except forms.ValidationError:
            wait = getattr(self.request, REQUEST_ATTRIBUTE, 0) if self.request is not None else 0
            if not wait:
                raise
            self.locked_message = wait_message(wait)
            raise forms.ValidationError(self.locked_message, code="locked") from None


class LoginLimitedForm(_LockedMessage, AuthenticationForm):
    """The GUI's sign-in form (registration/login.html shows `locked_message`)."""


class AdminLoginLimitedForm(_LockedMessage, AdminAuthenticationForm):
    """The admin's sign-in form."""


def answers_429_when_locked(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A sign-in page refused for the lock answers 429 with a Retry-After, the form and its message."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        wait = getattr(request, REQUEST_ATTRIBUTE, 0)
        if wait and response.status_code == 200:
            response.status_code = 429
            response["Retry-After"] = str(wait)
        return response

    return wrapped
