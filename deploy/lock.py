"""Regenerate the locks from pyproject.toml: `./claas lock` (a few minutes; it needs the package index).

pip-tools (`pip-compile`, pinned below, in its own venv under .venv-lock) resolves the project's
dependencies with pip itself, so torch and torchvision come from the same place `./claas setup`
takes them, and writes every package with the sha256 of each file it may install:

- requirements.lock       the runtime set: what the service runs on (the Docker image installs only this);
- requirements-test.lock  what the tests add on top (pytest, Playwright, Hypothesis, Schemathesis).

Both are installed with `pip install --require-hashes --no-deps`: the locks are the whole set, and
`--no-deps` is what lets them leave out packages that a dependency declares but CLaaS never runs
(DROPPED below, with the reason for each). Packages needed only by a dropped one go too. Pins already
in a lock are kept; `./claas lock --upgrade` re-resolves everything.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".venv-lock"
PIP_TOOLS = "pip-tools==7.6.2"
RUNTIME = ROOT / "requirements.lock"
TEST = ROOT / "requirements-test.lock"

# Declared by a dependency, never imported by CLaaS or by the code of its dependencies that CLaaS runs
# (checked by importing every module the web process and the worker use with each of these blocked,
# and by the whole test suite on an environment without them).
DROPPED = {
    "cwevals": "declared by wandb (which Avalanche imports at start-up) for its evaluation tools; never imported",
    "opencv-python": "declared by alibi-detect for its image perturbation utilities; no drift detector imports it",
    "scikit-image": "declared by alibi-detect for the same utilities; no drift detector imports it",
}
# Avalanche declares qpsolvers[open_source_solvers], sixteen solver back-ends (JAX among them, 0.8 GB in
# all); GEM and A-GEM call qpsolvers with solver="quadprog" only, which pyproject.toml names itself.
QP_SOLVERS = ("clarabel", "cvxopt", "daqp", "ecos", "highspy", "jax", "jaxlib", "jaxopt", "osqp", "piqp",
              "proxsuite", "pyqpmad", "qpalm", "qpax", "qtqp", "scs", "sip-qp-python")
DROPPED.update({name: "qpsolvers back-ends that GEM and A-GEM do not use (they ask for quadprog)"
                for name in QP_SOLVERS})

HEADER = """\
# {title}
# Generated from pyproject.toml by `./claas lock` (deploy/lock.py, pip-tools); do not edit by hand.
# Install with: pip install --require-hashes --no-deps -r {name}{also}
"""


def dropped_note(gone: set[str]) -> str:
    reasons: dict[str, list[str]] = {}
    for name in sorted(DROPPED):
        reasons.setdefault(DROPPED[name], []).append(name)
    lines = [f"#   {', '.join(names)}: {why}\n" for why, names in reasons.items()]
    if orphans := sorted(gone - {normalize(n) for n in DROPPED}):
        lines.append(f"#   and what only those need: {', '.join(orphans)}\n")
    return "# Left out with --no-deps (declared by a dependency, never run by CLaaS; deploy/lock.py):\n" + "".join(lines)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def blocks(text: str) -> list[tuple[str, str, set[str]]]:
    """pip-compile's output as (name, block text, parents from its `# via` lines), in order."""
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        if line[:1].isalnum():
            found.append((normalize(re.split(r"[=\[ ]", line, maxsplit=1)[0]), [line]))
        elif found and line[:1].isspace():
            found[-1][1].append(line)
    out = []
    for name, lines in found:
        parents: set[str] = set()
        for line in lines:
            comment = line.strip()
            if not comment.startswith("#"):
                continue
            comment = comment.lstrip("#").strip()
            comment = comment.removeprefix("via").strip()
            if comment and not comment.startswith("-"):
                parents.add("<project>" if "pyproject.toml" in comment else normalize(comment.split()[0]))
        out.append((name, "".join(lines), parents))
    return out


def pruned(entries: list[tuple[str, str, set[str]]], dropped: set[str]) -> tuple[list[tuple[str, str, set[str]]], set[str]]:
    """Leave out `dropped` and every package that only they need."""
    gone = {normalize(n) for n in dropped}
    while True:
        more = {name for name, _, parents in entries if name not in gone and parents and parents <= gone}
        if not more:
            break
        gone |= more
    return [e for e in entries if e[0] not in gone], gone


def tools() -> Path:
    python = TOOLS / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", PIP_TOOLS], check=True)
    return TOOLS / "bin" / "pip-compile"


def compile_(compiler: Path, output: Path, *extra: str, upgrade: bool) -> None:
    command = [str(compiler), "pyproject.toml", "--generate-hashes", "--allow-unsafe", "--strip-extras",
               "--no-emit-index-url", "--no-emit-find-links", "--no-header", "--quiet", "-o", str(output), *extra]
    if upgrade:
        command.append("--upgrade")
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "CUSTOM_COMPILE_COMMAND": "./claas lock"})


def pinned(path: Path) -> dict[str, str]:
    return {e[0]: re.match(r"[^=]+==([^ \\]+)", e[1])[1] for e in blocks(path.read_text())}


def sync() -> int:
    """Run by ./claas setup with the venv's Python after installing the locks: remove what they don't
    hold (left from an earlier lock), so that the environment is exactly the locks."""
    import importlib.metadata
    import sysconfig

    wanted = {**pinned(RUNTIME), **pinned(TEST)}
    keep = {"pip", "claas-client"}
    site = [sysconfig.get_paths()["purelib"]]
    installed = {normalize(d.metadata["Name"]) for d in importlib.metadata.distributions(path=site)}
    extra = sorted(installed - set(wanted) - keep)
    if extra:
        print(f"==> removing packages the locks no longer hold: {', '.join(extra)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra], check=True)
    return 0


def test_set(compiler: Path, tmp: Path, runtime: set[str], *, upgrade: bool) -> None:
    """What the tests add: resolved with the runtime set's versions as constraints, left-outs left out too
    (a test tool that needs one of their dependencies keeps it)."""
    with_tests = tmp / "test.txt"
    if TEST.exists() and not upgrade:
        with_tests.write_text(TEST.read_text())
    print("==> resolving the test set (the runtime set's versions as constraints)", flush=True)
    pins = tmp / "pins.txt"
    pins.write_text("".join(f"{name}=={version}\n" for name, version in pinned(RUNTIME).items()))
    compile_(compiler, with_tests, "--extra", "test", "-c", str(pins), upgrade=upgrade)
    kept, _ = pruned(blocks(with_tests.read_text()), set(DROPPED))
    added = [e for e in kept if e[0] not in runtime]
    TEST.write_text(HEADER.format(title="What the tests add to the runtime set.", name=TEST.name,
                                  also=f" -r {RUNTIME.name}") + "".join(e[1] for e in added))
    print(f"    {len(added)} packages", flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["sync"]:
        return sync()
    upgrade = "--upgrade" in argv
    compiler = tools()
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "runtime.txt"
        if RUNTIME.exists() and not upgrade:
            full.write_text(RUNTIME.read_text())  # pip-compile keeps the pins it finds in its output file
        print("==> resolving the runtime set", flush=True)
        compile_(compiler, full, upgrade=upgrade)
        runtime = blocks(full.read_text())
        kept, gone = pruned(runtime, set(DROPPED))
        RUNTIME.write_text(HEADER.format(title="The runtime set: what the service runs on.", name=RUNTIME.name, also="")
                           + dropped_note(gone) + "".join(e[1] for e in kept))
        print(f"    {len(kept)} packages; left out: {', '.join(sorted(gone))}", flush=True)

        test_set(compiler, Path(tmp), {e[0] for e in kept}, upgrade=upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
