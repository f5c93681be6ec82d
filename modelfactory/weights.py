"""Safe loading, checking and export of model weights: state_dict files and TorchScript archives only."""
from __future__ import annotations

import io
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

# Where an error message lists keys, it lists at most this many.
MAX_LISTED_KEYS = 20
# Checkpoint dicts that people often save instead of the bare state_dict.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")

HOW_TO_SAVE = ("save model.state_dict() with torch.save, or a TorchScript archive with torch.jit.save")
PICKLED_OBJECT = f"The file holds a pickled Python object, not a state_dict; {HOW_TO_SAVE}."
# torch names the refused class as "GLOBAL module.name" in its weights_only error.
GLOBAL_RE = re.compile(r"\bGLOBAL ([\w.]+)")
NOT_WEIGHTS = f"The file is not a PyTorch weights file; {HOW_TO_SAVE}."


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    source_format: str


def _rewind(source: Source) -> None:
    if hasattr(source, "seek"):
        source.seek(0)


def _zip_entries(source: Source) -> list[zipfile.ZipInfo] | None:
    """The entries of a zip archive (both torch.save and TorchScript write one), or None."""
    try:
        if not zipfile.is_zipfile(source):
            return None
        _rewind(source)
        with zipfile.ZipFile(source) as archive:
            return archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    finally:
        _rewind(source)


def _is_torchscript(entries: list[zipfile.ZipInfo]) -> bool:
    """TorchScript archives carry their code (`<root>/code/...`) and `constants.pkl`; torch.save zips do not."""
    return any("/code/" in e.filename or e.filename.endswith("/constants.pkl") for e in entries)


def _starts_with_pickle(source: Source) -> bool:
    """A raw pickle stream begins with the PROTO opcode (protocol 2 and later)."""
    if hasattr(source, "read"):
        head = source.read(1)
        _rewind(source)
    else:
        with open(source, "rb") as f:
            head = f.read(1)
    return head == pickle.PROTO


def _load_torchscript(source: Source) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(source, map_location="cpu")
    except Exception as exc:
        raise InvalidInput("The file looks like a TorchScript archive but could not be loaded; "
                           "save it again with torch.jit.save.", details={"reason": type(exc).__name__})
    return dict(module.state_dict())


def _load_state_dict(source: Source) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = GLOBAL_RE.search(text)
        if found:
            # weights_only refuses any class outside tensors and plain containers: a pickled
            # nn.Module or another Python object. It is never unpickled.
            raise InvalidInput(PICKLED_OBJECT, details={"global": found.group(1)})
        _rewind(source)
        if _starts_with_pickle(source):
            raise InvalidInput(PICKLED_OBJECT)
        raise InvalidInput(NOT_WEIGHTS)
    except Exception as exc:
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
    """Load an uploaded weights file without unpickling anything but tensors.

    Accepts a state_dict saved with torch.save (loaded with weights_only=True) or a TorchScript
    archive (its module's state_dict is taken). Anything else raises InvalidInput.
    """
    entries = _zip_entries(source)
    if entries is not None:
        # torch writes its archives uncompressed; a compressed one could unpack far beyond the upload.
        unpacked = sum(e.file_size for e in entries)
        if unpacked > max_unpacked_bytes:
            raise PayloadTooLarge(f"The archive unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes} bytes.",
                                  details={"unpacked_bytes": unpacked, "limit_bytes": max_unpacked_bytes})
        if _is_torchscript(entries):
            return LoadedWeights(_as_state_dict(_load_torchscript(source)), FORMAT_TORCHSCRIPT)
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


def output_check(*, model: nn.Module, input_shape: list[int]) -> None:
    """The dummy-batch output must be finite: NaN or infinite weights make a useless model."""
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *input_shape))
    if not torch.isfinite(out).all():
        raise InvalidInput("The model's output on a dummy batch holds NaN or infinite values; "
                           "the weights are not usable.")


def state_dict_normalised(*, model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as contiguous CPU tensors with no shared storage (small, portable files)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def state_dict_bytes(*, state_dict: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


def torchscript_bytes(*, model: nn.Module, input_shape: list[int]) -> bytes:
    """A traced TorchScript archive of the model in eval mode; the batch size stays free."""
    model.eval()
    example = torch.zeros(2, *input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated upstream but still the format users load without our code.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()
