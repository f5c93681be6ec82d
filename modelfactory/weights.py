"""Safe loading, checking and export of model weights: uploads are state_dict files only, never programs."""
from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping, Union

from claas_site.errors import InvalidInput, PayloadTooLarge
from claas_site.lazy import lazy_import

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")

Source = Union[str, Path, IO[bytes]]

FORMAT_STATE_DICT = "state_dict"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_INIT = "init"
FORMAT_PROGRAM = "program"
FORMAT_EXPORT = "pt2"

# Where an error message lists keys, it lists at most this many.
MAX_LISTED_KEYS = 20
# Checkpoint dicts that people often save instead of the bare state_dict.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")

HOW_TO_SAVE = "save a state_dict with torch.save(model.state_dict(), path)"
PICKLED_OBJECT = f"The file holds a pickled Python object, not a state_dict; {HOW_TO_SAVE}."
# torch names the refused class as "GLOBAL module.name" in its weights_only error.
GLOBAL_RE = re.compile(r"\bGLOBAL ([\w.]+)")
NOT_WEIGHTS = f"The file is not a PyTorch weights file; {HOW_TO_SAVE}."
EXPORT_REFUSED = (f"The file is a torch.export program, not a weights file: register it as a new model (POST "
                  f"/api/models/ without architecture), or {HOW_TO_SAVE}.")
# What torch.export.save writes beside its weights: the program's own description.
EXPORT_MEMBER_RE = re.compile(r"^[^/]+/(archive_format|models/[^/]+\.json)$")
TORCHSCRIPT_REFUSED = (f"The file is a TorchScript archive, a program that CLaaS never runs (loading it would run its "
                       f"code); {HOW_TO_SAVE} instead.")

ZIP_MAGIC = b"PK\x03\x04"
# Everything torch.save (2.x) writes under the archive's root folder, whose name is free (the file's stem).
# An archive with any other member is not a state_dict: TorchScript adds code/ and constants.pkl, and a
# disguised one may rename them, so what is refused is everything else, not what is known to be bad.
SAVE_MEMBER_RE = re.compile(r"(data\.pkl|data/\d+|version|byteorder|\.format_version|\.storage_alignment"
                            r"|\.data/serialization_id|\.data/version)")
# Members that mark a TorchScript archive (or a renamed one) for the error message.
TORCHSCRIPT_HINT_RE = re.compile(r"(^|/)(code|constants|extra)(/|\.|$)|\.py$|\.debug_pkl$|__torch__")
# TorchScript pickles name its module classes under this prefix.
TORCHSCRIPT_GLOBAL = "__torch__."


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    source_format: str


def _head(source: Source, size: int) -> bytes:
    if hasattr(source, "read"):
        source.seek(0)
        head = source.read(size)
        source.seek(0)
        return head
    with open(source, "rb") as f:
        return f.read(size)


def _zip_entries(source: Source) -> list[zipfile.ZipInfo]:
    """The entries of the zip archive torch would open (it goes by the leading magic, as here)."""
    try:
        if hasattr(source, "read"):
            source.seek(0)
            with zipfile.ZipFile(source) as archive:
                return archive.infolist()
        with zipfile.ZipFile(source) as archive:
            return archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise InvalidInput(NOT_WEIGHTS, details={"reason": "damaged zip archive"})
    finally:
        if hasattr(source, "seek"):
            source.seek(0)


def _layout_check(entries: list[zipfile.ZipInfo]) -> None:
    """Every member must be one torch.save writes, under one root folder; TorchScript archives are named."""
    # orig_filename: zipfile cuts a name at a NUL byte, torch's reader does not.
    names = [e.orig_filename for e in entries]
    root = names[0].split("/", 1)[0] if names else ""
    unexpected = [n for n in names
                  if not (root and n.startswith(root + "/") and SAVE_MEMBER_RE.fullmatch(n[len(root) + 1:]))]
    if any(EXPORT_MEMBER_RE.match(n) for n in unexpected):
        raise InvalidInput(EXPORT_REFUSED, details={"member": unexpected[0][:100]})
    if any(TORCHSCRIPT_HINT_RE.search(n) for n in unexpected):
        raise InvalidInput(TORCHSCRIPT_REFUSED, details={"member": unexpected[0][:100]})
    if unexpected:
        raise InvalidInput(NOT_WEIGHTS, details={"member": unexpected[0][:100]})
    if len(set(names)) != len(names):
        raise InvalidInput(NOT_WEIGHTS, details={"reason": "duplicate archive members"})
    if f"{root}/data.pkl" not in names:
        raise InvalidInput(NOT_WEIGHTS, details={"reason": "no data.pkl"})


def _load_state_dict(source: Source) -> Any:
    """torch.load with weights_only=True: only tensors and plain containers are rebuilt, no class is called.

    It is given an open file, not a path: torch picks other readers by path (a `.safetensors` suffix), and
    mmap stays off so that no storage is mapped from a path.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if hasattr(source, "read"):
                source.seek(0)
                return torch.load(source, map_location="cpu", weights_only=True, mmap=False)
            with open(source, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        found = GLOBAL_RE.search(str(exc))
        if found and found.group(1).startswith(TORCHSCRIPT_GLOBAL):
            raise InvalidInput(TORCHSCRIPT_REFUSED, details={"global": found.group(1)[:100]})
        if found:
            # weights_only refuses any class outside tensors and plain containers: a pickled
            # nn.Module or another Python object. It is never unpickled.
            raise InvalidInput(PICKLED_OBJECT, details={"global": found.group(1)[:100]})
        if _head(source, 1) == pickle.PROTO:
            raise InvalidInput(PICKLED_OBJECT)
        raise InvalidInput(NOT_WEIGHTS)
    except Exception as exc:
        if "TorchScript" in str(exc):
            raise InvalidInput(TORCHSCRIPT_REFUSED)
        raise InvalidInput(NOT_WEIGHTS, details={"reason": type(exc).__name__})


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        raise InvalidInput(f"The file holds a single tensor, not a state_dict; {HOW_TO_SAVE}.")
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"The file holds a {type(obj).__name__}, not a state_dict; {HOW_TO_SAVE}.")
    if not obj:
        raise InvalidInput("The file holds an empty state_dict.")
    for key in CHECKPOINT_KEYS:
        if isinstance(obj.get(key), Mapping):
            raise InvalidInput(f"The file holds a checkpoint dict with the weights under '{key}'; "
                               "save that state_dict alone with torch.save.", details={"key": key})
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidInput(f"The state_dict has a key that is not a string ({key!r}).",
                               details={"key": repr(key)[:80]})
        if not isinstance(value, torch.Tensor):
            raise InvalidInput(f"The state_dict's key '{key}' holds a value of type {type(value).__name__}, "
                               "not a tensor.", details={"key": key})
    return dict(obj)


def weights_read(*, source: Source, max_unpacked_bytes: int) -> LoadedWeights:
    """Load an uploaded state_dict without running or unpickling anything but tensors.

    Accepts what torch.save writes (the zip format, or the legacy pickle format), loaded with
    weights_only=True. TorchScript archives are programs and are refused before torch opens them:
    no `torch.jit.load` on uploaded bytes, ever. Anything else raises InvalidInput.
    """
    if _head(source, len(ZIP_MAGIC)) == ZIP_MAGIC:
        entries = _zip_entries(source)
        # torch writes its archives uncompressed; a compressed one could unpack far beyond the upload.
        unpacked = sum(e.file_size for e in entries)
        if unpacked > max_unpacked_bytes:
            raise PayloadTooLarge(f"The archive unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes} bytes.",
                                  details={"unpacked_bytes": unpacked, "limit_bytes": max_unpacked_bytes})
        _layout_check(entries)
    return LoadedWeights(_as_state_dict(_load_state_dict(source)), FORMAT_STATE_DICT)


def _listed(keys: list[str]) -> list[str]:
    return keys[:MAX_LISTED_KEYS]


def weights_check(*, model: nn.Module, state_dict: Mapping[str, torch.Tensor], architecture: str) -> None:
    """Keys and shapes must match the architecture exactly; the message names the first mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    details = {"missing": _listed(missing), "unexpected": _listed(unexpected)}
    for key, tensor in expected.items():
        if key not in state_dict:
            raise InvalidInput(f"The state_dict does not fit {architecture}: key '{key}' is missing.",
                               details={"key": key, **details})
        got = state_dict[key]
        if tuple(got.shape) != tuple(tensor.shape):
            raise InvalidInput(
                f"The state_dict does not fit {architecture}: key '{key}' has shape {list(got.shape)}, "
                f"expected {list(tensor.shape)}.",
                details={"key": key, "shape": list(got.shape), "expected": list(tensor.shape)})
    if unexpected:
        raise InvalidInput(f"The state_dict does not fit {architecture}: key '{unexpected[0]}' is not part "
                           "of the architecture.", details={"key": unexpected[0], **details})


def weights_apply(*, model: nn.Module, state_dict: Mapping[str, torch.Tensor], architecture: str) -> nn.Module:
    """Check the state_dict against the model and load it (strict)."""
    weights_check(model=model, state_dict=state_dict, architecture=architecture)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError) as exc:
        # Shapes matched, so what is left is a tensor that cannot be copied (e.g. sparse or complex).
        first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"The state_dict could not be loaded into {architecture}: {first}")
    return model


def output_check(*, output: torch.Tensor) -> None:
    """The dummy-batch output must be finite: NaN or infinite weights make a useless model."""
    if not torch.isfinite(output).all():
        raise InvalidInput("The model's output on a dummy batch holds NaN or infinite values; "
                           "the weights are not usable.")


def state_dict_normalised(*, model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as contiguous CPU tensors with no shared storage (small, portable files)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def state_dict_bytes(*, state_dict: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


def export_write(*, model: nn.Module, input_shape: list[int], path: Path) -> None:
    """Write a torch.export program of the model (eval mode, any batch size) to `path`.

    It loads with plain torch (`torch.export.load(path).module()`), without CLaaS on the path.
    """
    model.eval()
    example = (torch.zeros(2, *input_shape),)
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, os.fspath(path))


def torchscript_write(*, model: nn.Module, input_shape: list[int], path: Path) -> None:
    """Write a traced TorchScript archive of the model (eval mode) to `path`; the batch size stays free.

    torch writes the archive's records straight to the file, so no copy of it is held in memory.
    """
    model.eval()
    example = torch.zeros(2, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated upstream but still the format users load without our code.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, os.fspath(path))
