"""The drift memory budget through the REST API: the issue's lsdd ingest within it, an over-budget detector
refused at creation and an over-budget batch refused at ingest, with nothing stored."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clserver.deployments.models import Deployment
from tests.clserver.deployments.test_deployments_api import (  # noqa: F401 (fixtures)
    create, data_dir, digits, experiment, nothing_stored, trained_state)
from tests.clserver.drift.test_drift_budget import _peak_reset, _status

MiB = 2**20


def _batch(digits: dict, rows: int) -> dict:
    idx = np.resize(digits["te"], rows)  # held-out digits, repeated to make up the rows
    return {"inputs": digits["x"][idx].tolist(), "labels": digits["y"][idx].tolist()}


def test_an_lsdd_deployment_with_10000_permutations_ingests_2000_rows_within_the_budget(api, experiment, digits,
                                                                                         settings):
    # The request, with a fifth of the default reference so that the old code's 840 MB (16 GB with
    # 500 reference rows) stays affordable on a shared test machine.
    settings.DRIFT_MEMORY_BYTES = 96 * MiB
    body = _batch(digits, 2000)
    response = create(api, detector={"name": "lsdd", "n_permutations": 10_000, "n_reference": 100},
                      update={"trigger": "manual"})
    assert response.status_code == 201, response.json()
    first = api.post("/api/deployments/prod/ingest", body, format="json")  # first-call costs (torch's threads)
    assert first.status_code == 200, first.json()
    base = _peak_reset()
    response = api.post("/api/deployments/prod/ingest", body, format="json")
    peak = _status("VmHWM:") - base
    assert response.status_code == 200, response.json()
    assert response.json()["drift"]["detector"] == "lsdd" and response.json()["buffered"] == 4000
    assert response.json()["drift"]["p_val"] == first.json()["drift"]["p_val"]
    assert peak <= 96 * MiB, f"the ingest took {peak / MiB:.0f} MiB"  # the whole request: 55 MiB measured


def test_a_detector_over_the_budget_is_refused_at_creation_with_nothing_created(api, experiment, settings,
                                                                                 tmp_path: Path):
    settings.DRIFT_MEMORY_BYTES = 48 * MiB
    response = create(api, detector={"name": "lsdd", "n_permutations": 10_000})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("The lsdd detector would need about ")
    assert "budget of 48 MiB; lower detector.n_permutations to at most " in error and error.endswith(".")
    assert response.json()["details"]["detector.n_permutations"] < 10_000
    assert not Deployment.objects.exists()
    assert not [p for p in (tmp_path / "deployments").rglob("*") if p.is_file()]


def test_a_batch_over_the_budget_is_refused_at_ingest_with_nothing_stored(api, experiment, digits, settings,
                                                                          tmp_path: Path):
    settings.DRIFT_MEMORY_BYTES = 64 * MiB
    assert create(api, detector={"name": "mmd", "n_permutations": 50}, update={"trigger": "manual"}).status_code == 201
    response = api.post("/api/deployments/prod/ingest", _batch(digits, 3000), format="json")
    assert response.status_code == 413
    rows = response.json()["details"]["max_rows"]
    assert response.json()["error"] == (f"This deployment's mmd detector can test at most {rows} rows per ingest "
                                        "within the server's drift memory budget of 64 MiB; send these 3000 rows "
                                        "in smaller batches.")
    nothing_stored(tmp_path)
    response = api.post("/api/deployments/prod/ingest", _batch(digits, rows), format="json")
    assert response.status_code == 200 and response.json()["buffered"] == rows
