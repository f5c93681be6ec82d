"""Reads of uploaded datasets."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from claas_site.errors import NotFound
from clserver.datasets.models import Dataset


def dataset_list(*, owner: Any) -> QuerySet[Dataset]:
    return Dataset.objects.filter(owner=owner)


def dataset_get(*, owner: Any, name: str) -> Dataset:
    dataset = Dataset.objects.filter(owner=owner, name=name).first()
    if dataset is None:
        raise NotFound(f"You have no dataset named '{name}'.")
    return dataset
