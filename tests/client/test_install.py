"""`pip install ./client` in a fresh venv (no system site-packages, no index, no network) pulls in neither
Django nor Avalanche nor torch, and the installed client talks to a live server; torch is needed only
by register_model, as the `torch` extra.

The fresh venv resolves against wheels repacked from this environment's own installed requirements
(tests/client/wheelhouse.py): pip itself decides what the client needs, from its declared metadata.
What this does not show: that those versions resolve the same way from PyPI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.wheelhouse import wheelhouse

CLIENT = Path(__file__).resolve().parents[2] / "client"
SERVER_SIDE = {"django", "djangorestframework", "avalanche-lib", "torch", "torchvision", "mlflow", "channels",
               "alibi-detect", "claas"}
PROBE = """
import json, sys
from claas_client import Client, ClaasError
claas = Client(sys.argv[1], sys.argv[2])
experiments = claas.experiments()
try:
    claas.register_model("m", None, None)
    extra = "no error"
except ImportError as exc:
    extra = str(exc)
try:
    claas.predict("nothing-here", [[0.0] * 64])
    error = None
except ClaasError as exc:
    error = [exc.status_code, exc.message]
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"django", "avalanche", "torch", "pandas", "mlflow"})
print(json.dumps({"experiments": experiments, "extra": extra, "error": error, "heavy": heavy}))
"""


def pip_environment(home: Path) -> dict[str, str]:
    """No pip configuration from this machine (indexes, find-links, constraints): only what the test gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1", "HOME": str(home)}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fresh")
    # A copy: building from the checkout itself would leave build/ and *.egg-info in it.
    source = shutil.copytree(CLIENT, root / "client", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    shipped = wheelhouse(source / "pyproject.toml", root / "wheels")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    env = pip_environment(root)
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-cache-dir", "--find-links",
                           str(root / "wheels"), str(source)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], env=env, capture_output=True,
                            text=True, timeout=120, cwd=root, check=True)
    requires = subprocess.run([str(python), "-I", "-c", "import importlib.metadata as m, json; "
                               "print(json.dumps(m.distribution('claas-client').requires))"],
                              env=env, capture_output=True, text=True, timeout=120, cwd=root, check=True)
    return {"python": python, "env": env, "root": root, "shipped": shipped,
            "installed": {p["name"].lower() for p in json.loads(listed.stdout)},
            "requires": json.loads(requires.stdout)}


def test_the_fresh_venv_holds_the_client_and_its_small_dependencies_only(fresh):
    installed = fresh["installed"]
    assert "claas-client" in installed
    assert {"requests", "numpy", "tqdm"} <= installed
    assert installed & SERVER_SIDE == set()
    assert not any(name.startswith(("nvidia", "avalanche")) for name in installed)


def test_torch_and_pandas_are_declared_only_as_extras(fresh):
    for requirement in fresh["requires"]:
        name = requirement.split(";")[0].strip().lower()
        if name.startswith(("torch", "pandas")):
            assert "extra ==" in requirement, requirement
        else:
            assert not name.startswith(("django", "avalanche")), requirement
    assert any(r.startswith("torch") and 'extra == "torch"' in r for r in fresh["requires"])


def test_the_installed_client_works_against_a_live_server_without_torch(service, fresh):
    token = service.user("fresh").session.headers["Authorization"].split()[1]
    done = subprocess.run([str(fresh["python"]), "-I", "-c", PROBE, service.base_url, token], env=fresh["env"],
                          capture_output=True, text=True, timeout=120, cwd=fresh["root"])
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["experiments"] == []
    assert out["heavy"] == []
    assert "claas-client[torch]" in out["extra"]
    assert out["error"][0] == 404 and "nothing-here" in out["error"][1]
