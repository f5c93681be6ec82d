"""Issue 13, finding 3: downloads stream from disk; a TorchScript export is written once per version."""
from __future__ import annotations

import io
import tracemalloc

import pytest
import torch

from modelfactory.models import ModelVersion
from tests.modelfactory.files import build, saved

# About 1.1M parameters: a TorchScript archive of ~4.4 MB, large enough to tell from request overhead.
WIDE = {"hidden_size": 1024, "hidden_layers": 2}
TORCHSCRIPT = "/api/models/wide/versions/1/download?format=torchscript"


@pytest.fixture
def wide(api, register) -> torch.nn.Module:
    model = build(seed=3, **WIDE)
    response = register("wide", file=saved(model.state_dict()), params=WIDE)
    assert response.status_code == 201, response.content[:200]
    return model


def traced_peak(call):
    """What `call` returns, and the peak of Python allocations while it ran (bytes objects, BytesIO buffers)."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def body(response) -> bytes:
    assert response.status_code == 200, response.content[:200]
    assert response.streaming
    return b"".join(response.streaming_content)


def test_a_torchscript_download_is_exported_once_and_streamed_from_a_file(api, wide):
    from modelfactory.exports import export_path
    from modelfactory.selectors import model_version_path

    first = body(api.get(TORCHSCRIPT))
    export = export_path(weights=model_version_path(version=ModelVersion.objects.get()), format="torchscript")
    assert export.read_bytes() == first
    written = export.stat().st_mtime_ns

    second = body(api.get(TORCHSCRIPT))
    assert second == first
    assert export.stat().st_mtime_ns == written  # served again, not exported again
    loaded = torch.jit.load(io.BytesIO(second))  # our own output: trusted
    x = torch.rand(3, 64)
    wide.eval()
    torch.testing.assert_close(loaded(x), wide(x))


@pytest.mark.parametrize("format", ["torchscript", "state_dict"])
def test_four_open_downloads_do_not_each_hold_the_archive(api, wide, format):
    url = f"/api/models/wide/versions/1/download?format={format}"
    size = len(body(api.get(url)))  # the first download makes the export
    assert size > 4_000_000
    responses, peak = traced_peak(lambda: [api.get(url) for _ in range(4)])
    # Four answered requests whose bodies are not sent yet: each holds an open file, not a copy of it.
    assert peak < size // 4, f"peak {peak} bytes for four downloads of {size} bytes"
    assert all(r.status_code == 200 and r.streaming for r in responses)
    for response in responses:
        response.close()


def test_exports_lie_in_the_owners_model_folder_and_are_listed_for_deletion(api, wide, data_dir):
    from modelfactory.selectors import model_version_files

    body(api.get(TORCHSCRIPT))
    body(api.get(TORCHSCRIPT.replace("torchscript", "pt2")))
    version = ModelVersion.objects.get()
    files = model_version_files(version=version)
    owned = data_dir / "files" / "models" / str(version.model.owner_id)
    assert all(path.is_file() and path.parent == owned for path in files)
    assert sorted(p for p in owned.iterdir()) == sorted(files)  # no temporary file left behind


def test_deleting_a_model_removes_its_exports(api, wide, data_dir, django_capture_on_commit_callbacks):
    body(api.get(TORCHSCRIPT))
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/api/models/wide").status_code == 204
    assert [p for p in (data_dir / "files" / "models").rglob("*") if p.is_file()] == []
