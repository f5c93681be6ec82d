"""What the status and results of an experiment answer, key by key."""
from __future__ import annotations

from django.utils import timezone

from clserver.models import Experiment

STATUS_KEYS = ["exp_name", "status", "progress", "experience", "epoch", "n_experiences", "epochs", "attempts",
               "error", "started_at", "finished_at"]


def test_status_names_the_experiences_and_epochs_its_options_ask_for(api, user):
    assert api.post("/base-scenario/setup/", {"exp_name": "quiet"}, format="json").status_code == 201
    body = api.get("/base-scenario/alice/status/quiet").json()
    assert list(body) == STATUS_KEYS
    assert body == {"exp_name": "quiet", "status": "ready", "progress": 0.0, "experience": 0, "epoch": 0,
                    "n_experiences": 5, "epochs": 10, "attempts": 0, "error": None, "started_at": None,
                    "finished_at": None}


def test_a_failed_experiment_shows_its_error_without_server_paths_and_its_stored_results(api, user, settings):
    assert api.post("/base-scenario/setup/", {"exp_name": "broken"}, format="json").status_code == 201
    started = timezone.now()
    Experiment.objects.filter(name="broken").update(
        status="failed", progress=0.123456, started_at=started, error=f"No file {settings.DATA_DIR}/ckpt/a.pt.",
        results={"metrics": {"final_accuracy": 0.5}, "mlflow_models": [{"version": 1}],
                 "model": {"save_path": f"{settings.DATA_DIR}/models/final.pt"}})
    status = api.get("/base-scenario/alice/status/broken").json()
    assert status["error"] == "No file ckpt/a.pt." and status["progress"] == 0.1235
    assert status["started_at"] == started.isoformat().replace("+00:00", "Z")

    results = api.get("/base-scenario/alice/results/broken").json()
    # The documented keys first, the stored results' own keys where they stand, then progress and error.
    assert list(results) == ["exp_name", "status", "config", "metrics", "experiences", "cost", "model", "mlflow",
                             "mlflow_models", "progress", "error"]
    assert results["status"] == "failed" and results["metrics"] == {"final_accuracy": 0.5}
    assert results["model"] == {"save_path": "models/final.pt"} and results["mlflow_models"] == [{"version": 1}]
    assert results["config"]["exp_name"] == "broken" and results["experiences"] == [] and results["mlflow"] is None
    assert results["error"] == "No file ckpt/a.pt."


def test_a_body_that_is_not_a_json_object_is_refused_with_one_sentence(api, user):
    response = api.post("/base-scenario/setup/", [{"exp_name": "listed"}], format="json")
    assert response.status_code == 400
    assert response.json() == {"error": "The request body must be a JSON object.", "details": {}}
    assert not Experiment.objects.exists()
