"""torch.export programs for the tests, made the way users make them, and crafted ones that attack the reader."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from torch import nn


class ResidualNet(nn.Module):
    """Not in the zoo: batch norm, dropout and a residual block, ending in a linear layer."""

    def __init__(self, n_in: int = 64, hidden: int = 128, n_out: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.block = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.inp(x)))
        h = h + self.drop(torch.relu(self.block(h)))
        return self.head(h)


def exported(model: nn.Module, example: torch.Tensor, *, dynamic: bool = True) -> bytes:
    model.eval()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def upload(raw: bytes, name: str = "model.pt2") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, raw, content_type="application/octet-stream")


def rewritten(raw: bytes, change: dict[str, bytes | None]) -> bytes:
    """The archive with members replaced (by inner name, e.g. 'models/model.json'), added, or removed (None)."""
    source = zipfile.ZipFile(io.BytesIO(raw))
    root = source.namelist()[0].split("/", 1)[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        done = set()
        for info in source.infolist():
            inner = info.filename.split("/", 1)[1]
            if inner in change:
                done.add(inner)
                if change[inner] is not None:
                    target.writestr(info.filename, change[inner])
            else:
                target.writestr(info.filename, source.read(info))
        for inner, data in change.items():
            if inner not in done and data is not None:
                target.writestr(f"{root}/{inner}", data)
    return out.getvalue()


def member(raw: bytes, inner: str) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(raw))
    root = source.namelist()[0].split("/", 1)[0]
    return source.read(f"{root}/{inner}")


class _Touch:
    """Unpickling this creates a file: the proof that a pickle from the upload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def pickled_payload(creates: Path) -> bytes:
    return pickle.dumps(_Touch(creates))


def with_pickled_weight(raw: bytes, creates: Path) -> bytes:
    """The first weight stored as a pickle (use_pickle: true) that creates a file when loaded."""
    config = json.loads(member(raw, "data/weights/model_weights_config.json"))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    path = config["config"][first]["path_name"]
    buffer = io.BytesIO()
    torch.save(_Touch(creates), buffer)
    return rewritten(raw, {"data/weights/model_weights_config.json": json.dumps(config).encode(),
                           f"data/weights/{path}": buffer.getvalue()})


def with_model_json(raw: bytes, edit) -> bytes:
    doc = json.loads(member(raw, "models/model.json"))
    edit(doc)
    return rewritten(raw, {"models/model.json": json.dumps(doc).encode()})
