"""The model factory over HTTP: register, version, list, download and delete models."""
from __future__ import annotations

import io
import json

import pytest
import torch

from modelfactory.models import ModelVersion, RegisteredModel
from tests.modelfactory.files import build, saved, scripted, stored_files

TORCHSCRIPT_REFUSED = ("The file is a TorchScript archive, a program that CLaaS never runs (loading it would run its "
                       "code); save a state_dict with torch.save(model.state_dict(), path) instead.")


def download(api, url: str):
    response = api.get(url)
    assert response.status_code == 200, response.content[:200]
    return b"".join(response.streaming_content) if response.streaming else response.content


def load_bytes(raw: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(raw), weights_only=True)


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


# --- registering -------------------------------------------------------------------------------
def test_json_registration_makes_a_seeded_fresh_version_1(api, register):
    response = register("mymodel", description="digits classifier", seed=7)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "mymodel" and body["architecture"] == "simple_mlp"
    # Every default is filled in, so the stored params say exactly what was built.
    assert body["params"] == {"num_classes": 10, "input_shape": [64], "hidden_size": 16, "hidden_layers": 1,
                              "drop_rate": 0.5}
    assert body["description"] == "digits classifier"
    assert body["latest_version"] == 1
    [v1] = body["versions"]
    assert v1["version"] == 1 and v1["source_format"] == "init"
    assert v1["download_url"] == "/api/models/mymodel/versions/1/download"
    assert len(v1["sha256"]) == 64 and v1["size_bytes"] > 0
    assert body["mlflow_error"] is None and v1["mlflow_version"]

    weights = load_bytes(download(api, v1["download_url"]))
    assert_same_weights(weights, build(seed=7).state_dict())


def test_the_seed_makes_the_initial_weights_reproducible(api, register):
    a = register("seeded-a", seed=3).json()["versions"][0]["sha256"]
    b = register("seeded-b", seed=3).json()["versions"][0]["sha256"]
    c = register("seeded-c", seed=4).json()["versions"][0]["sha256"]
    assert a == b != c


def test_multipart_registration_with_a_state_dict_keeps_those_weights(api, register):
    model = build(seed=11)
    response = register("uploaded", file=saved(model.state_dict()))
    assert response.status_code == 201, response.json()
    [v1] = response.json()["versions"]
    assert v1["source_format"] == "state_dict"
    assert_same_weights(load_bytes(download(api, v1["download_url"])), model.state_dict())


def test_a_torchscript_archive_is_refused_with_how_to_save_a_state_dict(api, register, data_dir):
    model = build("simple_cnn", seed=5, channels=4)
    response = register("scripted", file=scripted(model, [1, 8, 8]), architecture="simple_cnn",
                        params={"channels": 4})
    body = assert_refused_and_nothing_stored(response, 400, data_dir)
    assert body["error"] == TORCHSCRIPT_REFUSED
    assert not RegisteredModel.objects.exists()


def test_uploading_weights_adds_the_next_version(api, register):
    register("mymodel")
    first = build(seed=21)
    response = api.post("/api/models/mymodel/versions/", {"file": saved(first.state_dict()), "note": "fine-tuned"},
                        format="multipart")
    assert response.status_code == 201, response.json()
    v2 = response.json()
    assert v2["version"] == 2 and v2["note"] == "fine-tuned" and v2["source_format"] == "state_dict"
    assert v2["mlflow_error"] is None
    second = build(seed=22)
    v3 = api.post("/api/models/mymodel/versions/", {"file": saved(second.state_dict())}, format="multipart").json()
    assert v3["version"] == 3

    detail = api.get("/api/models/mymodel").json()
    assert detail["latest_version"] == 3
    assert [v["version"] for v in detail["versions"]] == [1, 2, 3]
    assert [v["version"] for v in api.get("/api/models/mymodel/versions/").json()] == [1, 2, 3]
    assert api.get("/api/models/mymodel/versions/2").json()["sha256"] == v2["sha256"]
    assert_same_weights(load_bytes(download(api, v2["download_url"])), first.state_dict())
    assert_same_weights(load_bytes(download(api, v3["download_url"])), second.state_dict())


def test_list_shows_the_users_models(api, register):
    register("b-model")
    register("a-model", architecture="mlp", params={"hidden_layers": [8]})
    body = api.get("/api/models/").json()
    assert [m["name"] for m in body] == ["a-model", "b-model"]
    assert body[0]["params"]["hidden_layers"] == [8]


def test_download_as_torchscript_runs_without_claas_code(api, register):
    model = build(seed=2)
    register("mymodel", file=saved(model.state_dict()))
    raw = download(api, "/api/models/mymodel/versions/1/download?format=torchscript")
    loaded = torch.jit.load(io.BytesIO(raw))
    x = torch.rand(5, 64)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_an_unknown_download_format_is_refused(api, register):
    register("mymodel")
    response = api.get("/api/models/mymodel/versions/1/download?format=onnx")
    assert response.status_code == 400
    assert response.json()["error"] == "format must be one of: state_dict, pt2, torchscript."


def test_an_unknown_version_answers_404(api, register):
    register("mymodel")
    response = api.get("/api/models/mymodel/versions/9/download")
    assert response.status_code == 404
    assert response.json()["error"] == "Registered model 'mymodel' has no version 9."


# --- ownership -------------------------------------------------------------------------------
def test_another_users_model_answers_404(api, other_api, register):
    register("mymodel")
    for response in (
        other_api.get("/api/models/mymodel"),
        other_api.get("/api/models/mymodel/versions/"),
        other_api.get("/api/models/mymodel/versions/1"),
        other_api.get("/api/models/mymodel/versions/1/download"),
        other_api.post("/api/models/mymodel/versions/", {"file": saved(build().state_dict())}, format="multipart"),
        other_api.delete("/api/models/mymodel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "You have no registered model named 'mymodel'."
    assert other_api.get("/api/models/").json() == []
    assert api.get("/api/models/mymodel").status_code == 200


def test_two_users_may_use_the_same_name(api, other_api, register):
    assert register("mymodel").status_code == 201
    assert register("mymodel", client=other_api).status_code == 201


def test_anonymous_requests_are_refused(client, db):
    assert client.get("/api/models/").status_code in (401, 403)


# --- bad input -------------------------------------------------------------------------------
def assert_refused_and_nothing_stored(response, status: int, data_dir, error: str | None = None) -> dict:
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert set(body) == {"error", "details"}
    if error is not None:
        assert body["error"] == error
    assert stored_files(data_dir) == []
    return body


def test_an_unknown_architecture_is_refused(register, data_dir):
    body = assert_refused_and_nothing_stored(register("mymodel", architecture="transformer"), 400, data_dir)
    assert body["error"].startswith("Unknown architecture 'transformer'; choose one of: simple_mlp, mlp,")
    assert not RegisteredModel.objects.exists()


@pytest.mark.parametrize("params, error", [
    ({"hidden_size": "big"}, "params.hidden_size must be an integer."),
    ({"hidden_size": 0}, "params.hidden_size must be at least 1."),
    ({"drop_rate": 1.5}, "params.drop_rate must be at most 0.95."),
    ({"hidden_sise": 8}, "params has unknown key 'hidden_sise' for simple_mlp (allowed: drop_rate, hidden_layers, "
                         "hidden_size, input_shape, num_classes)."),
    ({"num_classes": 1}, "params.num_classes must be at least 2."),
])
def test_wrong_param_types_and_ranges_are_refused(register, data_dir, params, error):
    assert_refused_and_nothing_stored(register("mymodel", params=params), 400, data_dir, error)
    assert not RegisteredModel.objects.exists()


def test_params_that_are_not_a_json_object_are_refused(register, api, data_dir):
    response = api.post("/api/models/", {"name": "mymodel", "architecture": "simple_mlp", "params": "{not json",
                                         "file": saved(build().state_dict())}, format="multipart")
    assert_refused_and_nothing_stored(response, 400, data_dir,
                                      'params: must be a JSON object, e.g. {"hidden_size": 64}.')


@pytest.mark.parametrize("name", ["my model", "../etc", "a/b", ""])
def test_bad_names_are_refused(register, data_dir, name):
    response = register(name)
    assert response.status_code == 400
    assert response.json()["error"].startswith("name")
    assert not RegisteredModel.objects.exists()


def test_an_upload_over_the_size_limit_answers_413(settings, api, register, data_dir):
    settings.MAX_UPLOAD_BYTES = 1000
    big = build(hidden_size=64)
    body = assert_refused_and_nothing_stored(register("mymodel", file=saved(big.state_dict())), 413, data_dir)
    assert body["error"].endswith("the limit is 1000 bytes.")
    assert not RegisteredModel.objects.exists()

    settings.MAX_UPLOAD_BYTES = 200 * 1024 * 1024
    register("mymodel")
    settings.MAX_UPLOAD_BYTES = 1000
    response = api.post("/api/models/mymodel/versions/", {"file": saved(big.state_dict())}, format="multipart")
    assert response.status_code == 413
    assert ModelVersion.objects.count() == 1


def test_an_oversized_request_is_refused_from_its_length(settings, api, register):
    # A request far beyond the limit is refused before its body is parsed.
    settings.MAX_UPLOAD_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = register("mymodel", file=saved(build(hidden_size=64).state_dict()))
    assert response.status_code == 413
    assert response.json()["error"].startswith("The request is ")


@pytest.mark.parametrize("content, error", [
    (b"sepal_length,label\n5.1,0\n", "The file is not a PyTorch weights file; save a state_dict with "
                                     "torch.save(model.state_dict(), path)."),
    (b"", "file: The submitted file is empty."),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "The file is not a PyTorch weights file; save a state_dict with "
                                       "torch.save(model.state_dict(), path)."),
])
def test_a_file_that_is_not_weights_is_refused(register, data_dir, content, error):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = register("mymodel", file=SimpleUploadedFile("data.pt", content))
    assert_refused_and_nothing_stored(response, 400, data_dir, error)
    assert not RegisteredModel.objects.exists()


def test_a_pickled_model_is_refused_and_never_unpickled(register, api, data_dir):
    whole = build()
    response = register("mymodel", file=saved(whole))
    body = assert_refused_and_nothing_stored(response, 400, data_dir)
    assert body["error"].startswith("The file holds a pickled Python object, not a state_dict;")
    assert body["details"]["global"] == "modelfactory.zoo.ZooModel"
    assert not RegisteredModel.objects.exists()

    register("mymodel")
    response = api.post("/api/models/mymodel/versions/", {"file": saved(whole)}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"].startswith("The file holds a pickled Python object, not a state_dict;")
    assert ModelVersion.objects.count() == 1


def test_weights_of_another_architecture_name_the_first_mismatched_key(register, data_dir):
    cnn = build("simple_cnn", channels=4)
    response = register("mymodel", file=saved(cnn.state_dict()))
    body = assert_refused_and_nothing_stored(
        response, 400, data_dir, "The state_dict does not fit simple_mlp: key 'features.1.weight' is missing.")
    assert body["details"]["key"] == "features.1.weight"
    assert "features.0.weight" in body["details"]["unexpected"]


def test_weights_of_another_size_name_the_key_and_both_shapes(register, api, data_dir):
    register("mymodel")
    wider = build(hidden_size=32)
    response = api.post("/api/models/mymodel/versions/", {"file": saved(wider.state_dict())}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"] == ("The state_dict does not fit simple_mlp: key 'features.1.weight' has shape "
                                        "[32, 64], expected [16, 64].")
    assert ModelVersion.objects.count() == 1


def test_an_extra_key_is_named(register, data_dir):
    state = {**build().state_dict(), "temperature": torch.ones(1)}
    assert_refused_and_nothing_stored(
        register("mymodel", file=saved(state)), 400, data_dir,
        "The state_dict does not fit simple_mlp: key 'temperature' is not part of the architecture.")


def test_a_checkpoint_dict_is_refused_with_a_hint(register, data_dir):
    checkpoint = {"epoch": 3, "state_dict": build().state_dict()}
    assert_refused_and_nothing_stored(
        register("mymodel", file=saved(checkpoint)), 400, data_dir,
        "The file holds a checkpoint dict with the weights under 'state_dict'; save that state_dict alone with "
        "torch.save.")


def test_weights_that_give_nan_are_refused(register, data_dir):
    state = build().state_dict()
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    assert_refused_and_nothing_stored(
        register("mymodel", file=saved(state)), 400, data_dir,
        "The model's output on a dummy batch holds NaN or infinite values; the weights are not usable.")


def test_a_duplicate_name_answers_409(register):
    first = register("mymodel", seed=1).json()
    response = register("mymodel", seed=2)
    assert response.status_code == 409
    assert response.json()["error"] == "You already have a registered model named 'mymodel'."
    assert ModelVersion.objects.get().sha256 == first["versions"][0]["sha256"]


def test_a_version_upload_needs_a_file(register, api):
    register("mymodel")
    response = api.post("/api/models/mymodel/versions/", {"note": "no file"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"].startswith("file: ")


def test_weights_in_an_undocumented_field_are_refused_not_ignored(register, api, data_dir):
    # `weights` instead of `file` used to register a random initialisation (201) and drop the upload.
    weights = saved(build(seed=4).state_dict())
    response = api.post("/api/models/", {"name": "mymodel", "architecture": "simple_mlp",
                                         "params": json.dumps({"hidden_size": 16}), "weights": weights},
                        format="multipart")
    body = assert_refused_and_nothing_stored(response, 400, data_dir)
    assert body["error"] == ("Unknown field 'weights'; the fields are: name, architecture, params, description, "
                             "seed, file.")
    assert body["details"] == {"unknown": ["weights"]}
    assert not RegisteredModel.objects.exists()


def test_a_version_upload_with_undocumented_fields_is_refused_naming_them(register, api):
    register("mymodel")
    response = api.post("/api/models/mymodel/versions/", {"file": saved(build().state_dict()), "notes": "typo",
                                                          "weights": saved(build().state_dict())},
                        format="multipart")
    assert response.status_code == 400
    assert response.json()["error"] == "Unknown fields 'notes', 'weights'; the fields are: file, note."
    assert ModelVersion.objects.count() == 1


# --- delete ----------------------------------------------------------------------------------
def test_delete_removes_the_model_its_versions_and_files(api, register, data_dir,
                                                         django_capture_on_commit_callbacks):
    register("mymodel")
    api.post("/api/models/mymodel/versions/", {"file": saved(build().state_dict())}, format="multipart")
    assert len(stored_files(data_dir)) == 2
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete("/api/models/mymodel")
    assert response.status_code == 204
    assert api.get("/api/models/mymodel").status_code == 404
    assert stored_files(data_dir) == []
    assert not ModelVersion.objects.exists()
