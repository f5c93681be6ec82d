"""Reading uploaded weights: what is accepted, what is refused, and that nothing is unpickled."""
from __future__ import annotations

import collections
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
TORCHSCRIPT_REFUSED = ("The file is a TorchScript archive, a program that CLaaS never runs (loading it would run its "
                       "code); save a state_dict with torch.save(model.state_dict(), path) instead.")
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


def test_a_state_dict_saved_to_a_path_is_read_whatever_its_root_folder(tmp_path: Path):
    # torch.save names the archive's root folder after the file; the layout check allows any root.
    state = build().state_dict()
    path = tmp_path / "my.fine-tuned weights.pt"
    torch.save(state, path)
    with zipfile.ZipFile(path) as archive:
        assert {n.split("/", 1)[0] for n in archive.namelist()} == {"my.fine-tuned weights"}
    assert list(weights_read(source=str(path), max_unpacked_bytes=LIMIT).state_dict) == list(state)


@pytest.mark.parametrize("as_path", [True, False])
def test_a_torchscript_archive_is_refused_and_never_loaded(tmp_path: Path, monkeypatch, as_path: bool):
    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load was called on uploaded bytes")

    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    monkeypatch.setattr(torch.jit, "load", never)
    error = refusal(str(path) if as_path else io.BytesIO(path.read_bytes()))
    assert error.message == TORCHSCRIPT_REFUSED


def test_a_zip_with_a_member_torch_save_does_not_write_is_refused_naming_it():
    raw = torch_saved(build().state_dict()).getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr("archive/notes.txt", b"hello")
    error = refusal(io.BytesIO(buffer.getvalue()))
    assert error.message.startswith(NOT_WEIGHTS)
    assert error.details == {"member": "archive/notes.txt"}


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


# --- what the weights_only reader can reach ----------------------------------------------------
def torch_layout_zip(data_pkl: bytes, **members: bytes) -> io.BytesIO:
    """An archive laid out as torch.save lays it out, around a hand-written data.pkl."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/byteorder", b"little")
        for name, content in members.items():
            archive.writestr(f"archive/data/{name}", content)
    buffer.seek(0)
    return buffer


def global_call(module: str, name: str, path: bytes) -> bytes:
    """A protocol-2 pickle that calls module.name(path, True, 16): GLOBAL, arguments, REDUCE."""
    return (pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode()
            + pickle.BINUNICODE + len(path).to_bytes(4, "little") + path
            + pickle.NEWTRUE + pickle.BININT1 + b"\x10" + pickle.TUPLE3 + pickle.REDUCE + pickle.STOP)


class Reduce:
    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("make", [
    lambda path: global_call("torch", "from_file", bytes(path)),
    lambda path: global_call("torch", "UntypedStorage.from_file", bytes(path)),
    lambda path: global_call("torch.storage", "UntypedStorage.from_file", bytes(path)),
    lambda path: pickle.dumps({"w": Reduce(torch.from_file, (str(path), True, 16))}, protocol=2),
    lambda path: pickle.dumps({"w": Reduce(torch.UntypedStorage.from_file, (str(path), True, 16))}, protocol=2),
], ids=["GLOBAL torch.from_file", "GLOBAL torch.UntypedStorage.from_file",
        "GLOBAL torch.storage.UntypedStorage.from_file", "getattr(torch, from_file)",
        "getattr(UntypedStorage, from_file)"])
def test_the_weights_only_reader_cannot_call_from_file(tmp_path: Path, make, legacy: bool):
    # torch.from_file(path, shared=True, ...) would create the file; the reader refuses the call.
    # (A confirmation of torch's weights_only unpickler, which CLaaS relies on; not a change.)
    created = tmp_path / "created-by-from-file"
    data_pkl = make(created)
    source = io.BytesIO(data_pkl) if legacy else torch_layout_zip(data_pkl)
    error = refusal(source)
    assert error.message.startswith((PICKLED, NOT_WEIGHTS))
    assert not created.exists()


class StoragePointer(pickle.Pickler):
    """Pickles a tensor whose storage key is any string, as a hostile torch.save file would."""

    def persistent_id(self, obj):
        if isinstance(obj, str) and obj.startswith("storage:"):
            return "storage", torch.FloatStorage, obj.removeprefix("storage:"), "cpu", 16
        return None


@pytest.mark.parametrize("make_key", [lambda secret: f"../../../..{secret}", lambda secret: str(secret),
                                      lambda secret: f"0/../../../../..{secret}"],
                         ids=["relative", "absolute", "through a member"])
def test_storage_keys_name_archive_members_never_server_paths(tmp_path: Path, make_key):
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * 64)
    key = make_key(secret)
    buffer = io.BytesIO()
    StoragePointer(buffer, protocol=2).dump({"w": Reduce(torch._utils._rebuild_tensor_v2, (
        f"storage:{key}", 0, (16,), (1,), False, collections.OrderedDict()))})
    error = refusal(torch_layout_zip(buffer.getvalue(), **{"0": bytes(64)}))
    assert error.message.startswith(NOT_WEIGHTS)


def test_a_member_name_hidden_behind_a_nul_byte_is_seen():
    # Python's zipfile shows "archive/data/1" where torch's reader sees the whole name.
    raw = torch_saved(build().state_dict()).getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr("archive/data/99X/../code/__torch__.py", b"def f(): pass")
    # zipfile will not write a NUL into a name: put it in the bytes (local header and central directory).
    hidden = buffer.getvalue().replace(b"archive/data/99X/", b"archive/data/99\x00/")
    with zipfile.ZipFile(io.BytesIO(hidden)) as archive:
        assert "archive/data/99" in archive.namelist()
    error = refusal(io.BytesIO(hidden))
    assert error.message == TORCHSCRIPT_REFUSED


def test_a_torch_export_program_is_refused_and_never_loaded(tmp_path: Path, monkeypatch):
    # torch.export.load falls back to torch.load(weights_only=False) on its own: never on uploads.
    def never(*args, **kwargs):
        raise AssertionError("a program loader was called on uploaded bytes")

    program = torch.export.export(nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval(), (torch.zeros(2, 4),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    monkeypatch.setattr(torch.export, "load", never)
    monkeypatch.setattr(torch.jit, "load", never)
    error = refusal(io.BytesIO(path.read_bytes()))
    assert error.message.startswith("The file is a torch.export program, not a weights file")
    assert "torch.save(model.state_dict(), path)" in error.message
