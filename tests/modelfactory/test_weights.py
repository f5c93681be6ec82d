"""Reading uploaded weights: what is accepted, what is refused, and that nothing is unpickled."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from claas_site.errors import InvalidInput, PayloadTooLarge
from modelfactory.weights import weights_read
from tests.modelfactory.files import build

PICKLED = "The file holds a pickled Python object, not a state_dict;"
NOT_WEIGHTS = "The file is not a PyTorch weights file;"
LIMIT = 10 * 1024 * 1024


def torch_saved(obj, **kwargs) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    buffer.seek(0)
    return buffer


def refusal(source) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        weights_read(source=source, max_unpacked_bytes=LIMIT)
    return caught.value


def test_a_state_dict_in_the_zip_format_is_read():
    state = build().state_dict()
    loaded = weights_read(source=torch_saved(state), max_unpacked_bytes=LIMIT)
    assert loaded.source_format == "state_dict"
    assert list(loaded.state_dict) == list(state)


def test_a_state_dict_in_the_legacy_format_is_read():
    state = build().state_dict()
    loaded = weights_read(source=torch_saved(state, _use_new_zipfile_serialization=False), max_unpacked_bytes=LIMIT)
    assert loaded.source_format == "state_dict"
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())


def test_a_torchscript_archive_from_a_path_gives_its_modules_state_dict(tmp_path: Path):
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    loaded = weights_read(source=str(path), max_unpacked_bytes=LIMIT)
    assert loaded.source_format == "torchscript"
    assert list(loaded.state_dict) == ["0.weight", "0.bias"]


class Exploit:
    """Unpickling this would create a file; weights_only must refuse it before it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    error = refusal(torch_saved({"weight": Exploit(marker)}))
    assert error.message.startswith(PICKLED)
    assert error.details["global"] in ("posix.system", "os.system")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickled_module_is_refused(legacy: bool):
    error = refusal(torch_saved(build(), _use_new_zipfile_serialization=not legacy))
    assert error.message.startswith(PICKLED)


def test_a_plain_pickle_is_refused_as_a_pickled_object():
    assert refusal(io.BytesIO(pickle.dumps({"weight": [1.0, 2.0]}))).message.startswith(PICKLED)


def test_numpy_arrays_are_refused_because_they_need_unpickling():
    assert refusal(torch_saved({"weight": np.zeros(3)})).message.startswith(PICKLED)


def test_a_zip_that_is_not_a_torch_file_is_refused():
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros(3))
    buffer.seek(0)
    assert zipfile.is_zipfile(buffer)
    buffer.seek(0)
    assert refusal(buffer).message.startswith(NOT_WEIGHTS)


def test_a_single_tensor_is_not_a_state_dict():
    assert refusal(torch_saved(torch.zeros(3))).message.startswith("The file holds a single tensor, not a state_dict;")


def test_an_empty_state_dict_is_refused():
    assert refusal(torch_saved({})).message == "The file holds an empty state_dict."


def test_a_non_tensor_value_is_named():
    error = refusal(torch_saved({"weight": torch.zeros(2), "step": 3}))
    assert error.message == "The state_dict's key 'step' holds a value of type int, not a tensor."


def test_a_compressed_archive_that_unpacks_beyond_the_limit_is_refused():
    # Zeros deflate to almost nothing: the upload is small, its content is not.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"")
        archive.writestr("archive/data/0", bytes(LIMIT + 1))
    assert len(buffer.getvalue()) < LIMIT // 100
    buffer.seek(0)
    with pytest.raises(PayloadTooLarge) as caught:
        weights_read(source=buffer, max_unpacked_bytes=LIMIT)
    assert caught.value.message.startswith(f"The archive unpacks to {LIMIT + 1} bytes;")
