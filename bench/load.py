"""Load: N clients for S seconds against status, results and predict on loopback while a training job runs.

    .venv/bin/python -m bench.load                 # 50 clients, 30 s; writes its section of bench/BENCHMARKS.md
    .venv/bin/python -m bench.load --clients 10 --seconds 5 --no-record

The service is a live CLaaS (one uvicorn web process + one worker, production timers and default limits) in a
scratch data dir. Its one user owns a deployment (for predict) and an experiment that trains
through the whole window (for status and results). Each client is closed-loop: it sends its
next request when the previous answer is in; client i asks endpoint i mod 3. An error is any
answer other than 200, or no answer.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import ROOT, SERVICE_ENV, percentile

RECORD = ROOT / "bench" / "BENCHMARKS.md"
START, END = "<!-- load:start -->", "<!-- load:end -->"
USER = "loader"
ENDPOINTS = ("status", "results", "predict")


@dataclass
class Target:
    name: str
    method: str
    path: str
    body: bytes | None = None


def prepare(workdir: Path, say: Any = print) -> tuple[Any, Any, list[Target]]:
    """Start the service, deploy a small model, start a long training run; returns (service, client, targets)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.service import LiveService

    service = LiveService(workdir / "service", env=SERVICE_ENV)
    service.data_dir.mkdir(parents=True, exist_ok=True)
    service.start()
    client = service.user(USER)
    say(f"service up on {service.base_url}")
    training = {"train_mb_size": 32, "device": "cpu", "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    model = {"architecture": "simple_mlp", "params": {"hidden_size": 128}}
    bench = {"name": "split_digits", "n_experiences": 5, "seed": 1}
    for name, epochs in (("source", 2), ("training", 1000)):
        body = {"exp_name": name, "model": model, "benchmark": bench, "strategy": {"name": "replay"},
                "training": {**training, "epochs": epochs}}
        created = client.post("/base-scenario/setup/", body)
        assert created.status_code == 201, created.text
        if name == "source":
            assert client.post(f"/base-scenario/{USER}/exec/source").status_code == 202
            assert client.wait_status("source", timeout=900)["status"] == "completed"
    deployed = client.post("/api/deployments/", {"name": "served", "source": {"exp_name": "source"},
                                                  "detector": {"name": "ks"}, "update": {"trigger": "manual"}})
    assert deployed.status_code == 201, deployed.text
    assert client.post(f"/base-scenario/{USER}/exec/training").status_code == 202
    client.wait_status("training", statuses=("running",), timeout=600)
    while client.get(f"/base-scenario/{USER}/status/training").json()["epoch"] < 1:
        time.sleep(0.5)
    say("deployment 'served' ready; experiment 'training' is training")
    from clserver.training.streams import load_digits_arrays

    rows = load_digits_arrays()[0][:8].tolist()
    targets = [Target("status", "GET", f"/base-scenario/{USER}/status/training"),
               Target("results", "GET", f"/base-scenario/{USER}/results/training"),
               Target("predict", "POST", "/api/deployments/served/predict", json.dumps({"inputs": rows}).encode())]
    return service, client, targets


async def _client(session: aiohttp.ClientSession, base: str, target: Target, headers: dict[str, str],
                  warm_until: float, stop_at: float, out: dict[str, list]) -> None:
    while (started := time.perf_counter()) < stop_at:
        try:
            async with session.request(target.method, base + target.path, data=target.body,
                                       headers=headers) as response:
                await response.read()
                error = None if response.status == 200 else f"{response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            error = type(exc).__name__
        if started < warm_until:
            continue
        if error is None:
            out[target.name].append((time.perf_counter() - started) * 1000)
        else:
            out["errors"].append(f"{target.name}: {error}")


async def _load(base: str, token: str, targets: list[Target], clients: int, seconds: float,
                warmup: float) -> tuple[dict[str, list], float]:
    out: dict[str, list] = {t.name: [] for t in targets} | {"errors": []}
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        now = time.perf_counter()
        warm_until, stop_at = now + warmup, now + warmup + seconds
        await asyncio.gather(*(_client(session, base, targets[i % len(targets)], headers, warm_until, stop_at, out)
                               for i in range(clients)))
        measured = time.perf_counter() - warm_until
    return out, measured


def run(*, workdir: Path, clients: int, seconds: float, warmup: float = 2.0, say: Any = print) -> dict[str, Any]:
    """Prepare the service, run the load, and return every figure (the service is stopped after)."""
    service, client, targets = prepare(workdir, say)
    try:
        before = client.get(f"/base-scenario/{USER}/status/training").json()
        say(f"{clients} clients for {seconds:g} s (+{warmup:g} s warm-up) on {', '.join(ENDPOINTS)}")
        token = client.session.headers["Authorization"].split()[1]
        out, measured = asyncio.run(_load(service.base_url, token, targets, clients, seconds, warmup))
        after = client.get(f"/base-scenario/{USER}/status/training").json()
        cancelled = client.post("/api/experiments/training/cancel").status_code
    finally:
        service.stop()
    figures: dict[str, Any] = {"clients": clients, "seconds": round(measured, 1), "errors": len(out["errors"]),
                               "first_errors": out["errors"][:5], "endpoints": {},
                               "training": {"status_after": after["status"], "cancelled": cancelled == 202,
                                            "epochs_during": _epochs(after) - _epochs(before)}}
    everything: list[float] = []
    for name in ENDPOINTS:
        ms = out[name]
        everything += ms
        figures["endpoints"][name] = {"requests": len(ms), "rps": len(ms) / measured, "p50_ms": percentile(ms, 50),
                                      "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else None}
    figures["endpoints"]["all"] = {"requests": len(everything), "rps": len(everything) / measured,
                                   "p50_ms": percentile(everything, 50), "p99_ms": percentile(everything, 99),
                                   "max_ms": max(everything) if everything else None}
    return figures


def _epochs(status: dict[str, Any]) -> int:
    return status["experience"] * (status["epochs"] or 0) + status["epoch"]


def markdown(figures: dict[str, Any], command: str, started: datetime, load: tuple[float, ...]) -> str:
    lines = [
        START,
        "## Load: status, results and predict while a training job runs",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {started:%Y-%m-%d %H:%M} UTC",
        f"- **Machine:** {platform.processor() or platform.machine()}, {_cores()} cores; load average at the start "
        f"{[round(x, 2) for x in load]}",
        f"- **Set-up:** one web process (uvicorn) and one worker on loopback (production timers, default limits); "
        f"{figures['clients']} closed-loop clients for {figures['seconds']} s, client i on endpoint i mod 3; "
        "`predict` sends 8 rows of digits to a deployed `simple_mlp`; `status` and `results` read an experiment "
        f"that trained through the window ({figures['training']['epochs_during']} epochs during it).",
        "",
        "| endpoint | requests | req/s | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in figures["endpoints"].items():
        lines.append(f"| {name} | {row['requests']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['max_ms']:.1f} |")
    rates = {name: row["rps"] for name, row in figures["endpoints"].items()}
    if {"status", "results", "predict"} <= set(rates):
        for name in ("status", "results"):
            ratio = rates[name] / max(rates["predict"], 1e-9)
            lines.append("")
            lines.append(f"Target: `{name}` at least half of `predict`'s requests per second: {ratio:.2f} "
                         f"({'met' if ratio >= 0.5 and not figures['errors'] else 'not met'}).")
    lines += ["", f"**Errors: {figures['errors']}** (any answer other than 200, or none)."
              + (f" First: {figures['first_errors']}" if figures["errors"] else ""), "",
              "Reading: one web process serves every request; its threads share the Python interpreter lock, "
              "and the machine's cores are shared with the training worker and the load generator. Closed-loop "
              "clients therefore queue: p50 is close to clients ÷ throughput. More web processes raise the "
              "throughput; the figure to watch here is the error count.", END]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def record(section: str, path: Path = RECORD, *, start: str = START, end: str = END) -> None:
    """Put the section between its markers in BENCHMARKS.md (appended the first time); the rest stays."""
    text = path.read_text() if path.exists() else "# CLaaS benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--json", default="", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    started, load = datetime.now(timezone.utc), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="claas-load-", dir=ROOT / "var"))
    try:
        figures = run(workdir=workdir, clients=args.clients, seconds=args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    command = ".venv/bin/python -m bench.load" + (
        "" if (args.clients, args.seconds) == (50, 30.0) else f" --clients {args.clients} --seconds {args.seconds:g}")
    section = markdown(figures, command, started, load)
    print(section)
    if not args.no_record:
        record(section)
    return figures


if __name__ == "__main__":
    main()
