"""Which code runs each detector: alibi-detect where it is installed, CLaaS's own ks, mmd and lsdd
(clserver/drift/own.py) where it is not. Nothing here imports alibi-detect.

alibi-detect 0.12 and later are under the Business Source License 1.1 (production use needs a licence
from Seldon); CLaaS's own detectors are this repository's code. README.md, "Drift detection and its
licence", says the same for users.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from functools import cache

from claas_site.errors import InvalidInput

OWN_DETECTORS = ("ks", "mmd", "lsdd")
ALIBI_LICENCE = "Business Source License 1.1"
OWN_LICENCE = "this repository's own code"


@cache
def alibi_version() -> str | None:
    """alibi-detect's version when it can be imported, else None (found without importing it: its import
    takes seconds)."""
    try:
        if importlib.util.find_spec("alibi_detect") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version("alibi-detect")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def uses_alibi(name: str) -> bool:
    """Whether detector `name` is alibi-detect's here (else CLaaS's own, or unavailable)."""
    return alibi_version() is not None


def describe(name: str) -> dict[str, str | bool]:
    """The implementation and licence a detector listing shows."""
    version = alibi_version()
    if version is not None:
        return {"implementation": f"alibi-detect {version}", "licence": ALIBI_LICENCE, "available": True}
    if name in OWN_DETECTORS:
        return {"implementation": "claas", "licence": OWN_LICENCE, "available": True}
    return {"implementation": "alibi-detect (not installed)", "licence": ALIBI_LICENCE, "available": False}


def missing_message(name: str) -> str:
    return (f"detector '{name}' needs alibi-detect, which is not installed; use "
            f"{', '.join(OWN_DETECTORS[:-1])} or {OWN_DETECTORS[-1]}, or install alibi-detect ({ALIBI_LICENCE}).")


def require(name: str) -> None:
    """Raise InvalidInput (400) when detector `name` cannot run here."""
    if alibi_version() is None and name not in OWN_DETECTORS:
        raise InvalidInput(missing_message(name), details={"detector.name": name, "missing": "alibi-detect"})


def require_saved() -> None:
    """Raise InvalidInput when a detector saved by alibi-detect is to be loaded without it."""
    if alibi_version() is None:
        raise InvalidInput("This deployment's detector was saved by alibi-detect, which is not installed; "
                           f"install alibi-detect ({ALIBI_LICENCE}) or create a new deployment.",
                           details={"missing": "alibi-detect"})
