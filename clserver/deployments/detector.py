"""A deployment's fitted drift detector: its folder, its serving-cache entry, and one check against it."""
from __future__ import annotations

import contextlib
import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from django.db.models import F

from clserver.deployments.models import Deployment
from clserver.deployments.paths import deployment_dir, deployment_key
from clserver.drift import detectors as drift
from clserver.serving import cache as serving


@dataclass
class LoadedDetector:
    """A detector as cached in the web process."""

    detector: Any
    state: int  # the deployment's detector_state this object reflects (online detectors)


def _detector_path(deployment: Deployment) -> Path:
    return deployment_dir(deployment) / "detector"


@contextlib.contextmanager
def _detector_lock(deployment: Deployment) -> Iterator[None]:
    """Online detectors carry state between batches: one check at a time, across processes."""
    path = deployment_dir(deployment) / "detector.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def drift_check(*, deployment: Deployment, x: np.ndarray) -> drift.CheckResult:
    """Check one batch with the deployment's cached detector (online ones under the lock, state kept)."""
    path = _detector_path(deployment)
    loaded = serving.detector_cached(deployment_key=deployment_key(deployment),
                                     load=lambda: LoadedDetector(drift.detector_load(path), -1))
    if drift.detector_kind(deployment.detector) != "online":
        return drift.detector_check(detector=loaded.detector, options=deployment.detector, x=x)
    with _detector_lock(deployment):
        state = Deployment.objects.filter(pk=deployment.pk).values_list("detector_state", flat=True).first()
        if loaded.state != state:
            drift.detector_state_load(loaded.detector, path / "state")
        result = drift.detector_check(detector=loaded.detector, options=deployment.detector, x=x)
        drift.detector_state_save(loaded.detector, path / "state")
        Deployment.objects.filter(pk=deployment.pk).update(detector_state=F("detector_state") + 1)
        loaded.state = state + 1
    return result


def detector_cache_put(*, deployment: Deployment, detector: Any) -> None:
    """Cache a freshly fitted detector (state 0), so the first ingest does not load it from disk."""
    serving.detector_put(deployment_key=deployment_key(deployment), detector=LoadedDetector(detector, 0))
