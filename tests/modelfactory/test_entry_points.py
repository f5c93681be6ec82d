"""Operators add architectures by installing a package that declares them in the `claas.architectures`
entry point group; they are listed beside the zoo and register like its models."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from modelfactory.architectures import ARCHITECTURES, architectures_from_packages

PACKAGE = '''
from torch import nn


def wide_mlp(*, num_classes, input_shape, width):
    """A wide one-layer MLP, from an installed package."""
    n_in = 1
    for size in input_shape:
        n_in *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, num_classes))


wide_mlp.claas_params = [{"name": "width", "type": "int", "default": 256, "help": "Hidden units.", "min": 1,
                          "max": 4096}]


def broken(**params):
    raise RuntimeError("never called")


broken.claas_params = [{"name": "width", "type": "no-such-type", "default": 1}]
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch) -> Iterator[list[str]]:
    """A package installed the way pip leaves one: its module and a dist-info folder with entry points."""
    (tmp_path / "claas_extra_arch").mkdir()
    (tmp_path / "claas_extra_arch" / "__init__.py").write_text(PACKAGE)
    info = tmp_path / "claas_extra_arch-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: claas-extra-arch\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [claas.architectures]
        wide_mlp = claas_extra_arch:wide_mlp
        broken = claas_extra_arch:broken
        simple_mlp = claas_extra_arch:wide_mlp
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    added = architectures_from_packages()
    yield added
    for name in added:
        ARCHITECTURES._entries.pop(name, None)
    sys.modules.pop("claas_extra_arch", None)


def test_a_packaged_architecture_is_listed_beside_the_zoo(api, installed):
    assert installed == ["wide_mlp"]  # `broken` fails to load, `simple_mlp` may not replace the zoo's
    listed = {a["name"]: a for a in api.get("/api/architectures/").json()}
    assert "simple_mlp" in listed and "broken" not in listed
    entry = listed["wide_mlp"]
    assert entry["package"] == "claas-extra-arch"
    assert entry["help"] == "A wide one-layer MLP, from an installed package."
    assert {p["name"]: p["default"] for p in entry["params"]} == {"num_classes": 10, "input_shape": [64],
                                                                   "width": 256}


def test_a_packaged_architecture_registers_with_its_parameters_checked(api, installed):
    created = api.post("/api/models/", {"name": "wide", "architecture": "wide_mlp", "params": {"width": 32}},
                       format="json")
    assert created.status_code == 201, created.content
    assert created.json()["params"] == {"num_classes": 10, "input_shape": [64], "width": 32}
    refused = api.post("/api/models/", {"name": "wider", "architecture": "wide_mlp", "params": {"width": 0}},
                       format="json")
    assert refused.status_code == 400
    assert "width" in refused.json()["error"]
