"""A drift check as the dict its stored event holds (rendered by outputs.DriftCheckSerializer)."""
from __future__ import annotations

from typing import Any

from clserver.deployments.models import DriftCheck
from clserver.deployments.outputs import DriftCheckSerializer


def check_as_dict(check: DriftCheck) -> dict[str, Any]:
    return dict(DriftCheckSerializer(check).data)
