"""Wheels repacked from the distributions installed in the test's own environment, so that a fresh venv
can `pip install ./client` with no index and no network: only what a requirement names gets in."""
from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as metadata
import io
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SKIPPED = ("INSTALLER", "REQUESTED", "RECORD", "direct_url.json")


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(dist: metadata.Distribution, folder: Path) -> Path:
    """An installed distribution back into a wheel (its site-packages files and dist-info, a fresh RECORD)."""
    info = Path(dist._path)  # type: ignore[attr-defined]
    tag = next(line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines()
               if line.startswith("Tag:"))
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    target = folder / f"{name}-{dist.version}-{tag}.whl"
    records = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as wheel:
        for entry in dist.files or []:
            relative = entry.as_posix()
            if relative.startswith("..") or "__pycache__" in entry.parts:
                continue  # console scripts live outside site-packages; bytecode is rebuilt
            if entry.parts[0] == info.name and entry.name in SKIPPED:
                continue
            data = (info.parent / entry).read_bytes()
            wheel.writestr(relative, data)
            records.append((relative, _digest(data), str(len(data))))
        record = f"{info.name}/RECORD"
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([*records, (record, "", "")])
        wheel.writestr(record, buffer.getvalue())
    return target


def closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions these requirements pull in, transitively (no extras unless named)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(requirement.name)
        if key in found:
            continue
        found[key] = dist = metadata.distribution(requirement.name)
        for wanted in ["", *requirement.extras]:
            todo.extend((Requirement(r), wanted) for r in dist.requires or [])
    return found


def declared_requirements(pyproject: Path) -> list[str]:
    """What a plain `pip install <project>` asks for: its dependencies and its build requirements."""
    data = tomllib.loads(pyproject.read_text())
    return [*data["project"].get("dependencies", []), *data["build-system"]["requires"]]


def wheelhouse(pyproject: Path, folder: Path) -> list[str]:
    """Wheels of everything `pip install <project>` needs, in `folder`; their distribution names."""
    folder.mkdir(parents=True, exist_ok=True)
    dists = closure(declared_requirements(pyproject))
    for dist in dists.values():
        repack(dist, folder)
    return sorted(dists)
