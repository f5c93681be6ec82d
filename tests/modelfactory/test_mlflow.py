"""Every registered version is mirrored into the MLflow Model Registry as <username>.<model name>."""
from __future__ import annotations

import json

import mlflow
import torch

from claas_site import tracking
from modelfactory.models import ModelVersion
from tests.modelfactory.files import build, saved
from tests.service import free_port


def registry(settings):
    return mlflow.MlflowClient(tracking_uri=settings.MLFLOW_TRACKING_URI, registry_uri=settings.MLFLOW_TRACKING_URI)


def test_the_mlflow_registry_lists_every_version_with_architecture_and_params(settings, api, register, unique_name):
    created = register(unique_name, description="digits")
    assert created.status_code == 201, created.json()
    uploaded = build(seed=9)
    v2 = api.post(f"/api/models/{unique_name}/versions/", {"file": saved(uploaded.state_dict())},
                  format="multipart").json()
    assert v2["mlflow_error"] is None

    client = registry(settings)
    versions = client.search_model_versions(f"name='alice.{unique_name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    detail = api.get(f"/api/models/{unique_name}").json()
    assert detail["mlflow_name"] == f"alice.{unique_name}"
    assert [v["mlflow_version"] for v in detail["versions"]] == ["1", "2"]
    params = created.json()["params"]
    for version in versions:
        assert version.tags["claas.architecture"] == "simple_mlp"
        assert json.loads(version.tags["claas.params"]) == params
    model_tags = client.get_registered_model(f"alice.{unique_name}").tags
    assert model_tags["claas.architecture"] == "simple_mlp"
    assert json.loads(model_tags["claas.params"]) == params

    # Each version's run keeps the normalised state_dict beside the logged model.
    [second] = [v for v in versions if int(v.version) == 2]
    artifacts = [a.path for a in client.list_artifacts(second.run_id, "state_dict")]
    assert artifacts == [f"state_dict/{unique_name}-v2.pt"]

    # The MLflow copy is a loadable model with the uploaded weights.
    loaded = mlflow.pytorch.load_model(f"models:/alice.{unique_name}/2")
    for key, value in uploaded.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_an_unreachable_mlflow_server_keeps_the_upload_and_reports_why(settings, monkeypatch, api, register,
                                                                        unique_name):
    tracking.ping()  # the process-wide MLflow set-up happens with the real store
    # An MLflow server that is down: nothing listens on the port.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    response = register(unique_name)
    assert response.status_code == 201
    body = response.json()
    assert body["mlflow_error"].startswith("The version is stored but could not be registered in MLflow")
    assert body["versions"][0]["mlflow_version"] == ""
    assert api.get(body["versions"][0]["download_url"]).status_code == 200

    upload = api.post(f"/api/models/{unique_name}/versions/", {"file": saved(build().state_dict())},
                      format="multipart")
    assert upload.status_code == 201
    assert upload.json()["mlflow_error"].startswith("The version is stored")
    assert ModelVersion.objects.filter(model__name=unique_name).count() == 2


def test_deleting_a_model_removes_its_mlflow_versions(settings, api, register, unique_name,
                                                      django_capture_on_commit_callbacks):
    register(unique_name)
    client = registry(settings)
    assert len(client.search_model_versions(f"name='alice.{unique_name}'")) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/models/{unique_name}").status_code == 204
    assert client.search_model_versions(f"name='alice.{unique_name}'") == []
    assert client.search_registered_models(f"name='alice.{unique_name}'") == []
