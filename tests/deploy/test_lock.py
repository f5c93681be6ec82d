"""The locks: generated from pyproject.toml with hashes, split into runtime and test sets, installed
exactly (the environment the tests run in is the locks, no more), and without the packages that
deploy/lock.py leaves out."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sysconfig
import tomllib

import pytest

from tests.service import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==([^ \\]+)")


def lock_module():
    spec = importlib.util.spec_from_file_location("claas_lock", ROOT / "deploy" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(name: str) -> dict[str, str]:
    lock = lock_module()
    return {lock.normalize(m[1]): m[2] for line in (ROOT / name).read_text().splitlines() if (m := PIN.match(line))}


@pytest.mark.parametrize("name", ["requirements.lock", "requirements-test.lock"])
def test_every_pin_carries_the_hashes_pip_checks(name):
    entries = lock_module().blocks((ROOT / name).read_text())
    assert entries
    for package, text, _ in entries:
        hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}", text)
        assert PIN.match(text) and hashes, f"{package} in {name} is not pinned with hashes"


def test_runtime_and_test_sets_are_apart_and_the_direct_dependencies_are_pinned_as_declared():
    runtime, test = pins("requirements.lock"), pins("requirements-test.lock")
    assert not set(runtime) & set(test)
    assert {"pytest", "playwright", "schemathesis"} <= set(test)
    assert not {"pytest", "playwright", "schemathesis", "hypothesis"} & set(runtime)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = lock_module()
    for requirement, where in [*((r, runtime) for r in project["dependencies"]),
                               *((r, test) for r in project["optional-dependencies"]["test"])]:
        name, version = re.match(r"([^=\[]+)(?:\[[^\]]*\])?==(.+)", requirement).groups()
        assert where.get(lock.normalize(name)) == version, requirement


def test_the_environment_is_exactly_the_locks():
    """What ./claas setup installed: every pinned version, and nothing the locks leave out."""
    lock = lock_module()
    wanted = {**pins("requirements.lock"), **pins("requirements-test.lock")}
    # The venv's own site-packages: setuptools, once imported, puts its vendored copies on sys.path too.
    site = [sysconfig.get_paths()["purelib"]]
    installed = {lock.normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=site)}
    wrong = {name: (version, installed.get(name)) for name, version in wanted.items() if installed.get(name) != version}
    assert not wrong
    assert not set(lock.DROPPED) & set(installed)
    extra = set(installed) - set(wanted) - {"pip", "claas-client"}
    assert not extra


def test_pruning_leaves_out_what_only_dropped_packages_need():
    text = """\
alpha==1.0 \\
    --hash=sha256:aa
    # via claas (pyproject.toml)
beta==2.0 \\
    --hash=sha256:bb
    # via alpha
gamma==3.0 \\
    --hash=sha256:cc
    # via beta
shared==4.0 \\
    --hash=sha256:dd
    # via
    #   alpha
    #   gamma
only-gamma==5.0 \\
    --hash=sha256:ee
    # via gamma
"""
    lock = lock_module()
    kept, gone = lock.pruned(lock.blocks(text), {"gamma"})
    assert [name for name, _, _ in kept] == ["alpha", "beta", "shared"]
    assert gone == {"gamma", "only-gamma"}
