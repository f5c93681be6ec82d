"""Hostile input: schemathesis sends generated requests to every operation of /api/schema/.

It runs in-process against the WSGI application with a user's token. Every answer must be
free of server errors and match the schema (status, content type, body). Each test runs in
a transaction that is rolled back, so the jobs that exec or an update would queue are never
handed to a worker: nothing trains, yet the whole request path runs.
"""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Iterator

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings as hypothesis_settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.resources import (
    dataset_upload,
    deployment_create,
    experiment_completed,
    model_register,
    token_client,
)



def errors_are_one_sentence(ctx, response, case) -> bool | None:
    """Every 4xx answers {"error": "<one sentence>", "details": {...}}, never a page or a trace."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert set(body) == {"error", "details"}, body
    assert isinstance(body["details"], dict), body
    message = body["error"]
    assert isinstance(message, str) and message.strip().endswith((".", "?", "!")), message
    assert "Traceback" not in message, message
    return True


CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
          errors_are_one_sentence]
EXAMPLES_PER_OPERATION = 15


@contextlib.contextmanager
def connection_kept() -> Iterator[None]:
    """As Django's test client does: a request must not close the test's database connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# Loaded once at collection: one test per operation (generating the schema needs no database).
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture
def fuzzed(db, settings, tmp_path: Path) -> None:
    settings.DATA_DIR = tmp_path
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    # The fuzzer writes far faster than any person; the throttle has its own tests.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"writes": None, "predict": None}}
    cache.clear()


@pytest.fixture
def token(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


class Existing:
    """The caller's own resources, made on first need, so that half the generated requests reach them."""

    NAMES = {"exp_name": "fz-exp", "/api/datasets/": "fz-data", "/api/models/": "fz-model",
             "/api/deployments/": "fz-dep"}

    def __init__(self, user) -> None:
        self.user = user
        self.client = token_client(user)
        self.made: set[str] = set()
        self.turns = itertools.count()

    def name_for(self, path: str, parameter: str) -> str | None:
        if parameter == "exp_name":
            kind = "exp_name"
        elif parameter == "name":
            kind = next((k for k in self.NAMES if path.startswith(k)), "")
        else:
            return None
        if kind and kind not in self.made:
            self._make(kind)
            self.made.add(kind)
        return self.NAMES.get(kind)

    def _make(self, kind: str) -> None:
        if kind in ("exp_name", "/api/deployments/") and "exp_name" not in self.made:
            experiment_completed(owner=self.user, name=self.NAMES["exp_name"])
            self.made.add("exp_name")
        if kind == "/api/datasets/":
            dataset_upload(self.client, self.NAMES[kind])
        elif kind == "/api/models/":
            model_register(self.client, self.NAMES[kind])
        elif kind == "/api/deployments/":
            deployment_create(self.client, self.NAMES[kind], self.NAMES["exp_name"])


@pytest.fixture
def existing(fuzzed, user) -> Existing:
    return Existing(user)


@schema.parametrize()
# The same examples on every run, so a failure reproduces (a random run found the CSV carriage-return case).
@hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error_or_breaks_the_schema(case, fuzzed, existing, token, user):
    # Hypothesis seeds `random` alike for every example, so a counter takes turns instead:
    # every other request names the caller and their own resources, the rest what was generated.
    parameters = case.path_parameters or {}
    if next(existing.turns) % 2:
        for key in list(parameters):
            name = user.username if key == "username" else existing.name_for(case.path, key)
            if name is not None:
                parameters[key] = name
    with connection_kept():
        case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)
