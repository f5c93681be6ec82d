"""Drift checks and updates are numbered 1, 2, ... within their deployment (issue 13, finding 8):
a tenant's ids, URLs and events say nothing of how many checks or updates other tenants ran."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from clserver.deployments.models import Deployment, DeploymentUpdate
from tests.reliability.resources import INPUT, deployment_create, experiment_completed


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.DEPLOYMENT_DIR = tmp_path / "deployments"
    return tmp_path


@pytest.fixture
def tenants(user, other_user, api, other_api):
    """Alice and Bob each deploy a model under the same name (manual updates, one sample is enough)."""
    for owner, client in ((user, api), (other_user, other_api)):
        experiment_completed(owner=owner, name="exp")
        deployment_create(client, "dep", "exp")
    return api, other_api


def ingest(client, n: int = 5) -> dict:
    response = client.post("/api/deployments/dep/ingest", {"inputs": INPUT * n, "labels": [3] * n}, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def update(client) -> dict:
    response = client.post("/api/deployments/dep/update", {}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()


def cancel(client, number: int):
    return client.post(f"/api/deployments/dep/updates/{number}/cancel", format="json")


def test_each_deployment_numbers_its_checks_and_updates_from_one(tenants):
    alice, bob = tenants
    # Interleaved, so that global sequences would give each tenant gaps.
    checks = {"alice": [ingest(alice)["drift"]["check_id"]]}
    checks["bob"] = [ingest(bob)["drift"]["check_id"], ingest(bob)["drift"]["check_id"]]
    checks["alice"].append(ingest(alice)["drift"]["check_id"])
    assert checks == {"alice": [1, 2], "bob": [1, 2]}

    updates = {"bob": [update(bob)["id"]], "alice": [update(alice)["id"]]}
    assert cancel(bob, updates["bob"][0]).json()["status"] == "cancelled"
    assert cancel(alice, updates["alice"][0]).json()["status"] == "cancelled"
    ingest(bob)
    updates["bob"].append(update(bob)["id"])
    ingest(alice)
    updates["alice"].append(update(alice)["id"])
    assert updates == {"alice": [1, 2], "bob": [1, 2]}

    detail = alice.get("/api/deployments/dep").json()
    assert [c["id"] for c in detail["drift_checks"]] == [1, 2, 3]
    assert detail["last_drift_check"]["id"] == 3
    assert [(u["id"], u["status"]) for u in detail["updates"]] == [(1, "cancelled"), (2, "queued")]
    events = alice.get("/api/deployments/dep/events").json()
    assert [e["check_id"] for e in events if e["type"] == "drift_check"] == [1, 2, 3]
    assert [(e["update"], e["status"]) for e in events if e["type"] == "update"] == [
        (1, "queued"), (1, "cancelled"), (2, "queued")]
    # The update's own messages name it by its number too.
    busy = alice.post("/api/deployments/dep/update", {}, format="json")
    assert busy.status_code == 409 and busy.json()["error"].startswith("Update 2 of deployment 'dep'")


def test_an_update_started_by_drift_names_its_check_by_number(tenants):
    alice, bob = tenants
    for _ in range(3):
        ingest(bob)
    alice_dep = Deployment.objects.get(owner__username="alice")
    alice_dep.update_options = {**alice_dep.update_options, "trigger": "every_n_samples", "every_n_samples": 5}
    alice_dep.save()
    started = ingest(alice)
    assert started["drift"]["check_id"] == 1 and started["update"] == {"id": 1, "status": "queued"}
    assert started["trigger"].endswith("update 1 is queued.")
    [queued] = alice.get("/api/deployments/dep").json()["updates"]
    assert queued["drift_check"] == 1


def test_cancel_takes_the_number_and_another_tenants_number_is_not_found(tenants):
    alice, bob = tenants
    ingest(bob)
    bob_first = update(bob)["id"]
    cancel(bob, bob_first)
    ingest(bob)
    bob_second = update(bob)["id"]
    ingest(alice)
    alice_first = update(alice)["id"]
    assert (bob_first, bob_second, alice_first) == (1, 2, 1)
    # Alice's update is the third row of the table: its primary key is no name for it.
    row = DeploymentUpdate.objects.get(deployment__owner__username="alice")
    assert row.pk >= 3
    assert cancel(alice, row.pk).status_code == 404
    # Bob's update 2 exists; Alice has no update 2: not found, and Bob's is untouched.
    missing = cancel(alice, 2)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Deployment 'dep' has no update 2.", "details": {}}
    assert DeploymentUpdate.objects.get(deployment__owner__username="bob", number=2).status == "queued"
    done = cancel(alice, 1)
    assert done.status_code == 202 and done.json()["id"] == 1 and done.json()["status"] == "cancelled"


def test_the_migration_numbers_existing_rows_per_deployment_in_creation_order(transactional_db, user, other_user):
    executor = MigrationExecutor(connection)
    before, after = [("clserver", "0002_deployments")], [("clserver", "0003_per_deployment_numbers")]
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    Deployment = apps.get_model("clserver", "Deployment")
    DriftCheck = apps.get_model("clserver", "DriftCheck")
    Update = apps.get_model("clserver", "DeploymentUpdate")
    common = {"source": {}, "architecture": "simple_mlp", "model_params": {}, "detector": {}, "update_options": {}}
    mine = Deployment.objects.create(owner_id=user.pk, name="a", **common)
    theirs = Deployment.objects.create(owner_id=other_user.pk, name="b", **common)
    check = {"detector": "ks", "n_samples": 1, "is_drift": False, "champion_version": 1}
    job = {"trigger": "manual", "options": {}, "base_version": 1}
    for deployment in (mine, theirs, theirs, mine, mine):
        DriftCheck.objects.create(deployment=deployment, **check)
        Update.objects.create(deployment=deployment, **job)

    executor.loader.build_graph()
    executor.migrate(after)
    apps = executor.loader.project_state(after).apps
    for model in ("DriftCheck", "DeploymentUpdate"):
        rows = apps.get_model("clserver", model).objects.order_by("id")
        assert [(r.deployment_id, r.number) for r in rows] == [
            (mine.pk, 1), (theirs.pk, 1), (theirs.pk, 2), (mine.pk, 2), (mine.pk, 3)]
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_deleting_a_deployment_with_a_queued_update_names_the_update_by_its_number(tenants):
    alice, bob = tenants
    ingest(bob)
    update(bob)  # bob's update takes a global primary key before alice's
    ingest(alice)
    number = update(alice)["id"]
    response = alice.delete("/api/deployments/dep")
    assert response.status_code == 409
    assert response.json()["error"] == f"Update {number} of deployment 'dep' is queued; cancel it first."
    assert DeploymentUpdate.objects.get(deployment__owner__username="alice").pk != number
