"""Fixtures shared by the whole suite."""
from __future__ import annotations

from typing import Iterator

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tests.service import NOT_INHERITED, LiveService


@pytest.fixture(autouse=True)
def _store_variables_stay_put() -> Iterator[None]:
    """Undo what a test leaves in os.environ that picks a store (mlflow.set_tracking_uri exports one)."""
    import os

    before = {k: os.environ.get(k) for k in NOT_INHERITED}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """One live CLaaS (web + one worker) shared by the tests that need real processes."""
    live = LiveService(tmp_path_factory.mktemp("service")).start()
    yield live
    live.stop()


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user(username="alice", password="alice-password")


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user(username="bob", password="bob-password")


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=user)
    return client


@pytest.fixture
def other_api(other_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=other_user)
    return client
