"""Downloads of stored weights in the formats users load without CLaaS: state_dict, torch.export, TorchScript.

Stored weights never change, so each export is written once beside them (tmp file, then os.replace)
and every download streams that file: no request builds an archive in memory.
"""
from __future__ import annotations

import fcntl
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from claas_site.errors import InvalidInput, NotFound
from claas_site.quotas import quota_stored_bytes_check
from modelfactory.architectures import PROGRAM, architecture_build
from modelfactory.weights import FORMAT_EXPORT, FORMAT_STATE_DICT, FORMAT_TORCHSCRIPT, export_write, torchscript_write

# Download format -> file name suffix.
DOWNLOAD_FORMATS: dict[str, str] = {
    FORMAT_STATE_DICT: ".pt",
    FORMAT_EXPORT: ".pt2",
    FORMAT_TORCHSCRIPT: ".torchscript.pt",
}
# How each format loads in a Python with torch only; the GUI shows the line beside the download.
LOAD_LINES: dict[str, str] = {
    FORMAT_STATE_DICT: "model.load_state_dict(torch.load(path, weights_only=True))",
    FORMAT_EXPORT: "model = torch.export.load(path).module()",
    FORMAT_TORCHSCRIPT: "model = torch.jit.load(path)",
}
# One export at a time per process: a request never holds more than one model being exported.
_EXPORT_LOCK = threading.Lock()


def formats_for(*, architecture: str) -> list[str]:
    """The download formats of a model: TorchScript is not offered for uploaded programs."""
    return [f for f in DOWNLOAD_FORMATS if not (architecture == PROGRAM and f == FORMAT_TORCHSCRIPT)]


def export_path(*, weights: Path, format: str) -> Path:
    """Where the download in `format` lies: the weights file itself, or its export beside it.

    Exports are named after the weights file (a fresh random name per version), so a later version
    can never be served an earlier one's export, even where database ids are reused.
    """
    if format == FORMAT_STATE_DICT:
        return weights
    return weights.with_name(f"{weights.stem}.{format}.export")


def export_paths(*, weights: Path) -> list[Path]:
    """Every file a set of weights may have (the weights and their exports): delete them all."""
    return [export_path(weights=weights, format=f) for f in DOWNLOAD_FORMATS]


def export_file(*, weights: Path, architecture: str, params: dict[str, Any], format: str, owner: Any,
                what: str) -> Path:
    """The file to send for a download of `weights` in `format`, written on first use.

    `what` names the weights in messages (e.g. "'digits' version 2").
    """
    if format not in DOWNLOAD_FORMATS:
        raise InvalidInput(f"format must be one of: {', '.join(DOWNLOAD_FORMATS)}.", details={"format": format[:50]})
    if format not in formats_for(architecture=architecture):
        raise InvalidInput("An uploaded program has no TorchScript download; download format=pt2 (load it with "
                           "torch.export.load(path).module()) or format=state_dict.", details={"format": format})
    if not weights.is_file():
        raise NotFound(f"The weights file of {what} is missing from the data directory.")
    path = export_path(weights=weights, format=format)
    if path.is_file():
        return path
    # The export counts in the owner's stored bytes like any file of theirs.
    quota_stored_bytes_check(owner=owner, adding=weights.stat().st_size)
    with _EXPORT_LOCK, open(weights, "rb") as held:
        # Other processes export under the same lock on the weights file; the first one writes.
        fcntl.flock(held, fcntl.LOCK_EX)
        if not path.is_file():
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
            try:
                import torch

                model = architecture_build(architecture=architecture, params=params)
                model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
                write = export_write if format == FORMAT_EXPORT else torchscript_write
                write(model=model, input_shape=params["input_shape"], path=tmp)
                os.replace(tmp, path)
            finally:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
    return path
