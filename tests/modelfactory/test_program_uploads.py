"""Issue 13, finding 1: an uploaded TorchScript archive ran its code at load time (torch.from_file read and
wrote server files). Uploads are now state_dicts only: no program of the upload ever runs."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from modelfactory.models import ModelVersion, RegisteredModel
from tests.modelfactory.files import rezipped, stealing_archive

HOW_TO_SAVE = "save a state_dict with torch.save(model.state_dict(), path)"
# 64 bytes: what the archive copies into its weights (16 float32 values), printable so they stay finite.
SECRET = b"SECRET_KEY=django-insecure-4f9a1c0e7b2d8a6f3e5c9b1d7a2e4f6c8b0d!"
TARGET = b"original content of a server file, which must stay as it is...."


@pytest.fixture
def server(tmp_path_factory) -> Path:
    """Files of the server outside the data dir: a secret to read and a file to overwrite."""
    root = tmp_path_factory.mktemp("server")
    (root / "secret_key").write_bytes(SECRET)
    (root / "settings.py").write_bytes(TARGET)
    return root


def upload(api, register, how: str, raw: bytes):
    """Send the archive as version 1 of a new model, or as the next version of an existing one."""
    file = SimpleUploadedFile("weights.pt", raw, content_type="application/octet-stream")
    if how == "register":
        return register("stolen", file=file)
    assert register("stolen").status_code == 201
    return api.post("/api/models/stolen/versions/", {"file": file}, format="multipart")


def assert_refused_and_nothing_kept(response, how: str, data_dir: Path) -> None:
    assert response.status_code == 400, response.content[:300]
    assert HOW_TO_SAVE in response.json()["error"]
    if how == "register":
        assert not RegisteredModel.objects.exists() and not ModelVersion.objects.exists()
    else:
        assert list(ModelVersion.objects.values_list("version", flat=True)) == [1]
    assert SECRET not in response.content
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert SECRET[:16] not in path.read_bytes(), path


@pytest.mark.parametrize("how", ["register", "version"])
def test_an_archive_that_reads_a_server_file_is_refused_and_reads_nothing(api, register, data_dir, server, how):
    response = upload(api, register, how, stealing_archive(read=server / "secret_key"))
    assert_refused_and_nothing_kept(response, how, data_dir)
    assert "TorchScript" in response.json()["error"]


@pytest.mark.parametrize("how", ["register", "version"])
def test_an_archive_that_writes_server_files_is_refused_and_writes_nothing(api, register, data_dir, server, how):
    created = server / "created-by-upload"
    response = upload(api, register, how, stealing_archive(writes=(server / "settings.py", created)))
    assert_refused_and_nothing_kept(response, how, data_dir)
    assert (server / "settings.py").read_bytes() == TARGET
    assert not created.exists()


def test_probing_for_server_files_gets_the_same_answer(api, register, data_dir, server):
    # A size beyond a file's end gave a distinct error, so uploads told which files exist and how big.
    answers = set()
    for read, floats in ((server / "secret_key", 16), (server / "no-such-file", 16), (server / "secret_key", 4096)):
        response = register("probe", file=SimpleUploadedFile("w.pt", stealing_archive(read=read, floats=floats)))
        assert response.status_code == 400
        answers.add(response.content)
    assert len(answers) == 1
    assert not RegisteredModel.objects.exists()


DISGUISES = {
    "root folder renamed": lambda n: "weights/" + n.split("/", 1)[1],
    "constants.pkl renamed": lambda n: n.replace("constants.pkl", "consts.bin"),
    "code moved": lambda n: n.replace("/code/", "/src/"),
    "code and constants renamed to data names": lambda n: (
        n.replace("/constants.pkl", "/data/900").replace("/code/__torch__.py.debug_pkl", "/data/901")
        .replace("/code/__torch__.py", "/data/902")),
    "code and constants dropped": lambda n: None if "/code/" in n or n.endswith("constants.pkl") else n,
}


@pytest.mark.parametrize("disguise", DISGUISES.values(), ids=DISGUISES.keys())
def test_a_disguised_torchscript_archive_never_runs(api, register, data_dir, server, disguise):
    created = server / "created-by-upload"
    raw = stealing_archive(read=server / "secret_key", writes=(server / "settings.py", created))
    response = register("stolen", file=SimpleUploadedFile("weights.pt", rezipped(raw, disguise)))
    assert_refused_and_nothing_kept(response, "register", data_dir)
    assert (server / "settings.py").read_bytes() == TARGET
    assert not created.exists()


def test_the_payload_really_reads_and_writes_when_torchscript_loads_it(server):
    # The archives above are real attacks: loaded the way the old code loaded them, they steal and write.
    import io

    import torch

    created = server / "created-by-load"
    raw = stealing_archive(read=server / "secret_key", writes=(server / "settings.py", created))
    loaded = torch.jit.load(io.BytesIO(raw))
    assert loaded.state_dict()["features.1.weight"].flatten()[:16].numpy().tobytes() == SECRET
    assert (server / "settings.py").read_bytes() != TARGET
    assert created.exists()
