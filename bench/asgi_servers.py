"""The ASGI server, chosen by measurement: each candidate serves the same CLaaS, in turn, in one run.

    .venv/bin/python -m bench.asgi_servers                       # the candidates importable here
    .venv/bin/python -m bench.asgi_servers --extra DIR --root daphne=/path/to/an/older/checkout

One live service (a deployment for `predict`, an experiment training through the whole run, as in the
load benchmark, bench/load.py) and its data dir; every candidate is started on its own port on that
data dir, one process, and measured with the same load: start-up to the first /healthz 200 and its
memory (benchmark 6), `predict` at 1, 8 and 32 closed-loop clients (benchmark 4), and 48 clients on
status, results and predict at once (the load benchmark), then stopped. Each candidate is measured in
ROUNDS rounds, the order reversed every round; the figures are medians over the rounds.

Candidates whose package is not installed are skipped; `--extra DIR` puts a folder of packages on
their path (`pip install --target DIR hypercorn granian daphne ...`), and `--root NAME=DIR` runs one
candidate from another checkout (daphne with the hooks it had before the switch). The figures that
chose uvicorn are in bench/BENCHMARKS.md, between the markers below.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import requests

from bench.harness import PYTHON, ROOT, percentile, rss_mb, run_json
from bench.load import _load, prepare, record

START, END = "<!-- asgi-servers:start -->", "<!-- asgi-servers:end -->"
APP = "claas_site.asgi:application"
ROUNDS = 2
CONCURRENCY = (1, 8, 32)
MIXED_CLIENTS = 48


def _uvicorn(port: int) -> list[str]:
    from claas_site.web import uvicorn_command

    return uvicorn_command(host="127.0.0.1", port=port)


# name -> (the module that must be importable, the command line on a port). daphne's and hypercorn's
# defaults; granian in its ASGI mode, one worker, as the others.
CANDIDATES: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "uvicorn": ("uvloop", _uvicorn),
    "daphne": ("daphne", lambda port: [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP]),
    "hypercorn": ("hypercorn", lambda port: [PYTHON, "-m", "hypercorn", APP, "-b", f"127.0.0.1:{port}"]),
    "granian": ("granian", lambda port: [PYTHON, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                                         "--port", str(port), "--workers", "1", APP]),
}


def installed(module: str, extra: str) -> bool:
    if importlib.util.find_spec(module) is not None:
        return True
    return bool(extra) and any((Path(extra) / name).exists() for name in (module, module + ".py"))


class Candidate:
    def __init__(self, name: str, service: Any, workdir: Path, *, extra: str, root: Path) -> None:
        self.name, self.root = name, root
        from tests.service import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**service.env, "PYTHONPATH": os.pathsep.join(p for p in (extra, str(root)) if p)}
        self.log = workdir / f"server-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> dict[str, float]:
        command = CANDIDATES[self.name][1](self.port)
        started = time.perf_counter()
        self.proc = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=open(self.log, "a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - started < 120:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return {"start_s": time.perf_counter() - started, "rss_mb": rss_mb(self.proc.pid)}
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer /healthz within 120 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def measure(candidate: Candidate, targets: list[Any], token: str, workdir: Path, seconds: float,
            say: Callable[[str], None]) -> dict[str, Any]:
    figures: dict[str, Any] = dict(candidate.start())
    predict = next(t for t in targets if t.name == "predict")
    body = workdir / "predict.json"
    body.write_bytes(predict.body)
    # The first call loads the model into the process's cache: done before anything is timed.
    warm = requests.post(candidate.url + predict.path, data=predict.body, timeout=120,
                         headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    if warm.status_code != 200:
        raise RuntimeError(f"{candidate.name}: predict answered {warm.status_code}: {warm.text[:300]}")
    for clients in CONCURRENCY:
        out = run_json("bench.loadgen", ["--url", candidate.url + predict.path, "--body", str(body),
                                         "--header", f"Authorization: Token {token}", "--clients", str(clients),
                                         "--seconds", str(seconds), "--warmup", "1"], timeout=seconds + 120)
        figures[f"predict_{clients}"] = {k: out[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")}
    out, measured = asyncio.run(_load(candidate.url, token, targets, MIXED_CLIENTS, seconds, 1.0))
    figures["mixed"] = {t.name: {"rps": len(out[t.name]) / measured, "p99_ms": percentile(out[t.name], 99)}
                        for t in targets}
    figures["mixed"]["errors"] = len(out["errors"])
    figures["rss_after_mb"] = rss_mb(candidate.proc.pid)
    candidate.stop()
    say(f"{candidate.name}: start {figures['start_s']:.2f} s, predict "
        + ", ".join(f"{c}: {figures[f'predict_{c}']['throughput_rps']:.0f}/s" for c in CONCURRENCY)
        + ", mixed " + ", ".join(f"{t.name} {figures['mixed'][t.name]['rps']:.0f}/s" for t in targets))
    return figures


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the rounds (errors summed)."""
    def merge(values: list[Any], key: str) -> Any:
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values], k) for k in values[0]}
        if key == "errors":
            return sum(values)
        return statistics.median(values)
    return {key: merge([r[key] for r in rounds], key) for key in rounds[0]}


def run(*, names: list[str], roots: dict[str, Path], extra: str, seconds: float, rounds: int,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="claas-asgi-", dir=ROOT / "var"))
    service, client, targets = prepare(workdir, say)
    token = client.session.headers["Authorization"].split()[1]
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for r in range(rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                say(f"round {r + 1}/{rounds}: {name}")
                candidate = Candidate(name, service, workdir, extra=extra, root=roots.get(name, ROOT))
                try:
                    per_round[name].append(measure(candidate, targets, token, workdir, seconds, say))
                finally:
                    candidate.stop()
        training = client.get(f"/base-scenario/{client.username}/status/training").json()["status"]
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"servers": {name: median_of(results) for name, results in per_round.items()},
            "seconds": seconds, "rounds": rounds, "training_status_after": training}


def markdown(figures: dict[str, Any], command: str, started: datetime, load: tuple[float, ...],
             versions: dict[str, str], roots: dict[str, Path]) -> str:
    servers = figures["servers"]
    lines = [START, "## The ASGI server: uvicorn, daphne, hypercorn and granian on the same CLaaS", "",
             f"- **Command:** `{command}`", f"- **Date:** {started:%Y-%m-%d %H:%M} UTC",
             f"- **Machine:** {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
             f"at the start {[round(x, 2) for x in load]}",
             "- **Servers:** " + ", ".join(f"{n} {versions.get(n, '?')}" + (" (from the checkout before the switch, "
                                                                          "with its daphne hooks)" if n in roots else "")
                                          for n in servers),
             f"- **Set-up:** one live service (a deployed `simple_mlp`; an experiment training through the whole "
             f"run); each server in turn on its data dir, one process, {figures['seconds']:g} s per measurement "
             f"after 1 s of warm-up, {figures['rounds']} rounds in alternating order, medians. `predict` sends 8 "
             f"rows; the mixed load is {MIXED_CLIENTS} clients, client i on status, results, predict (i mod 3).", "",
             "| server | start-up s | RSS at start MB | predict 1 req/s (p99 ms) | predict 8 | predict 32 | "
             "mixed: status req/s | results | predict | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in servers.items():
        p = [f"{f[f'predict_{c}']['throughput_rps']:.0f} ({f[f'predict_{c}']['p99_ms']:.1f})" for c in CONCURRENCY]
        m = f["mixed"]
        errors = m["errors"] + sum(f[f"predict_{c}"]["errors"] for c in CONCURRENCY)
        lines.append(f"| {name} | {f['start_s']:.2f} | {f['rss_mb']:.0f} | {' | '.join(p)} | {m['status']['rps']:.0f} | "
                     f"{m['results']['rps']:.0f} | {m['predict']['rps']:.0f} | {errors} |")
    base = servers.get("daphne")
    if base:
        lines += ["", "Ratios to daphne (throughput):", ""]
        for name, f in servers.items():
            if name == "daphne":
                continue
            ratios = [f[f"predict_{c}"]["throughput_rps"] / max(base[f"predict_{c}"]["throughput_rps"], 1e-9)
                      for c in CONCURRENCY]
            mixed = sum(f["mixed"][k]["rps"] for k in ("status", "results", "predict")) / max(
                sum(base["mixed"][k]["rps"] for k in ("status", "results", "predict")), 1e-9)
            lines.append(f"- {name}: predict " + ", ".join(f"{c} client(s) {r:.2f}x" for c, r in zip(CONCURRENCY, ratios))
                         + f"; mixed load, all endpoints {mixed:.2f}x")
    lines.append(END)
    return "\n".join(lines) + "\n"


def versions_of(names: list[str], extra: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, distributions, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            found = [d.version for d in distributions(path=[extra]) if d.metadata["Name"].lower() == name] if extra else []
            out[name] = found[0] if found else "?"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(CANDIDATES), help="comma-separated, from: " + ", ".join(CANDIDATES))
    parser.add_argument("--extra", default="", help="a folder of packages for the candidates (pip install --target)")
    parser.add_argument("--root", action="append", default=[], help="NAME=DIR: run NAME from another checkout")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.extra:
        sys.path.append(args.extra)
    roots = {name: Path(path).resolve() for name, _, path in (r.partition("=") for r in args.root)}
    names = []
    for name in args.servers.split(","):
        if name not in CANDIDATES:
            parser.error(f"unknown server {name!r}; choose from {', '.join(CANDIDATES)}")
        if installed(CANDIDATES[name][0], args.extra):
            names.append(name)
        else:
            print(f"skipping {name}: {CANDIDATES[name][0]} is not installed", flush=True)
    started, load = datetime.now(timezone.utc), os.getloadavg()
    figures = run(names=names, roots=roots, extra=args.extra, seconds=args.seconds, rounds=args.rounds)
    print(json.dumps(figures, indent=2))
    command = ".venv/bin/python -m bench.asgi_servers" + (f" {' '.join(argv if argv is not None else sys.argv[1:])}"
                                                          if (argv or sys.argv[1:]) else "")
    section = markdown(figures, command, started, load, versions_of(names, args.extra), roots)
    print(section)
    if not args.no_record:
        record(section, start=START, end=END)
    return figures


if __name__ == "__main__":
    main()
