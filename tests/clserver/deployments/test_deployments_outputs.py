"""What GET /api/deployments/<name> answers, key by key, and that the OpenAPI schema documents the same keys."""
from __future__ import annotations

from typing import Any

from django.utils import timezone

from clserver.deployments.models import Deployment, DeploymentUpdate, DeploymentVersion
from tests.clserver.deployments.test_deployments_api import (  # noqa: F401  (fixtures)
    create,
    data_dir,
    digits,
    experiment,
    rotated,
    trained_state,
)

SUMMARY_KEYS = ["name", "source", "champion_version", "detector", "update", "n_drift_checks", "last_drift_check",
                "n_updates", "samples_seen", "created_at"]
DETAIL_KEYS = SUMMARY_KEYS + ["username", "champion", "buffered_samples", "drift_pending", "source_train_samples",
                              "drift_checks", "versions", "updates", "mlflow", "urls"]
CHECK_KEYS = ["id", "created_at", "detector", "n_samples", "is_drift", "p_val", "distance", "threshold",
              "champion_version", "details"]
VERSION_KEYS = ["version", "origin", "decision", "is_champion", "aliases", "validation_accuracy", "metrics",
                "memory_size", "served_at", "mlflow_version", "created_at", "downloads"]
UPDATE_KEYS = ["id", "status", "job_status", "decision", "trigger", "reason", "error", "base_version",
               "candidate_version", "n_samples", "champion_accuracy", "candidate_accuracy", "metrics", "cost",
               "options", "attempts", "drift_check", "created_at", "started_at", "finished_at"]


def is_utc_timestamp(value: Any) -> bool:
    return isinstance(value, str) and value.endswith("Z") and "T" in value


def test_the_detail_lists_checks_versions_and_updates_with_their_keys_in_order(api, experiment, digits):
    assert create(api, detector={"name": "ks"}, update={"trigger": "manual", "min_samples": 50}).status_code == 201
    te = digits["te"]
    for rows in (te[:60], te[60:120]):
        ingested = api.post("/api/deployments/prod/ingest", {"inputs": rotated(digits["x"][rows]).tolist(),
                                                             "labels": digits["y"][rows].tolist()}, format="json")
        assert ingested.status_code == 200, ingested.json()
    requested = api.post("/api/deployments/prod/update", {}, format="json")
    assert requested.status_code == 202
    assert list(requested.json()) == UPDATE_KEYS
    deployment = Deployment.objects.get(name="prod")
    DeploymentVersion.objects.create(deployment=deployment, version=2, origin="update", decision="rejected",
                                     weights_file="w.pt", memory_file="m.npz", mlflow_version="4")
    DeploymentUpdate.objects.filter(deployment=deployment).update(
        status="completed", decision="rejected", candidate_version=2, reason="The candidate is worse.",
        metrics={"champion": {"union": 0.9}, "candidate": {"union": 0.5}}, finished_at=timezone.now())

    body = api.get("/api/deployments/prod").json()
    assert list(body) == DETAIL_KEYS
    assert body["username"] == "alice" and body["n_drift_checks"] == 2 and body["n_updates"] == 1
    assert body["last_drift_check"] == body["drift_checks"][-1] and list(body["last_drift_check"]) == CHECK_KEYS
    assert [c["id"] for c in body["drift_checks"]] == [1, 2]
    assert all(is_utc_timestamp(c["created_at"]) for c in body["drift_checks"])
    v1, v2 = body["versions"]
    assert list(v1) == VERSION_KEYS and body["champion"] == v1
    assert (v1["is_champion"], v1["aliases"], v1["decision"], v1["mlflow_version"]) == (True, ["champion"], None, None)
    assert (v2["is_champion"], v2["aliases"], v2["decision"], v2["mlflow_version"]) == (
        False, ["challenger"], "rejected", "4")
    assert v2["served_at"] is None and v2["validation_accuracy"] is None
    [update] = body["updates"]
    assert list(update) == UPDATE_KEYS
    assert (update["id"], update["status"], update["job_status"], update["decision"]) == (
        1, "rejected", "completed", "rejected")
    assert (update["champion_accuracy"], update["candidate_accuracy"]) == (0.9, 0.5)
    assert update["drift_check"] is None and update["error"] is None and update["reason"] == "The candidate is worse."
    assert body["mlflow"] == {"registered_name": "alice.deploy.prod"}
    assert body["urls"] == {
        "predict": "/api/deployments/prod/predict", "ingest": "/api/deployments/prod/ingest",
        "update": "/api/deployments/prod/update", "rollback": "/api/deployments/prod/rollback",
        "events": "/api/deployments/prod/events", "websocket": "/ws/deployments/alice/prod/"}

    [summary] = api.get("/api/deployments/").json()
    assert list(summary) == SUMMARY_KEYS and summary == {k: body[k] for k in SUMMARY_KEYS}


def component(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node or len(node.get("allOf", ())) == 1:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node["allOf"][0]
    return node


def test_the_schema_documents_the_keys_the_detail_answers_with(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    answer = schema["paths"]["/api/deployments/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    detail = component(schema, answer["schema"])
    assert list(detail["properties"]) == DETAIL_KEYS
    assert list(component(schema, detail["properties"]["last_drift_check"])["properties"]) == CHECK_KEYS
    assert list(component(schema, detail["properties"]["versions"]["items"])["properties"]) == VERSION_KEYS
    assert list(component(schema, detail["properties"]["updates"]["items"])["properties"]) == UPDATE_KEYS
    assert detail["properties"]["last_drift_check"].get("nullable") is True
    update = schema["paths"]["/api/deployments/{name}/update"]["post"]["responses"]["202"]["content"]
    assert list(component(schema, update["application/json"]["schema"])["properties"]) == UPDATE_KEYS


def test_detectors_list_their_kind_and_whether_they_test_each_feature_apart(api):
    detectors = {d["name"]: d for d in api.get("/api/detectors/").json()}
    assert list(detectors["ks"]) == ["name", "help", "params", "kind", "feature_wise", "implementation", "licence",
                                     "available", "preprocess"]
    assert detectors["ks"]["feature_wise"] is True and detectors["ks"]["kind"] == "batch"
    assert list(detectors["mmd"]) == ["name", "help", "params", "kind", "implementation", "licence", "available",
                                      "preprocess"]
