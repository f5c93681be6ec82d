"""Fixtures of the model factory tests: an isolated files directory and weights files to upload."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable
from uuid import uuid4

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.modelfactory.files import MLP


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    """Weights files of each test land in its own directory (MLflow keeps the shared store)."""
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def unique_name() -> str:
    """A model name unused in the MLflow store, which outlives each test's database."""
    return f"mymodel-{uuid4().hex[:8]}"


@pytest.fixture
def register(api) -> Callable[..., Any]:
    """POST /api/models/ as JSON, or as multipart when a file is given."""

    def _register(name: str, file: SimpleUploadedFile | None = None, client=None, **fields: Any):
        body = {"name": name, **MLP, **fields}
        client = client or api
        if file is None:
            return client.post("/api/models/", body, format="json")
        form = {k: json.dumps(v) if k == "params" else v for k, v in body.items()}
        return client.post("/api/models/", {**form, "file": file}, format="multipart")

    return _register
