"""A closed-loop HTTP load generator (its own process): N clients send the same request as fast
as answers come back, for a fixed time on loopback; prints one JSON line of figures.

    python -m bench.loadgen --url http://127.0.0.1:8000/api/deployments/d/predict \
        --body body.json --header "Authorization: Token ..." --clients 8 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.harness import percentile


async def client_loop(session: aiohttp.ClientSession, method: str, url: str, body: bytes, headers: dict[str, str],
                      stop_at: float, warm_until: float, latencies: list[float], errors: list[str],
                      answers: dict[str, int]) -> None:
    while True:
        started = time.perf_counter()
        if started >= stop_at:
            return
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                payload = await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            ok, payload = False, str(exc).encode()
        elapsed = time.perf_counter() - started
        if started < warm_until:
            continue
        if ok:
            latencies.append(elapsed)
            key = payload[:200].decode(errors="replace")
            answers[key] = answers.get(key, 0) + 1
        else:
            errors.append(payload[:200].decode(errors="replace"))


async def load(method: str, url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float,
               warmup: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        now = time.perf_counter()
        warm_until, stop_at = now + warmup, now + warmup + seconds
        await asyncio.gather(*(client_loop(session, method, url, body, headers, stop_at, warm_until, latencies, errors,
                                           answers) for _ in range(clients)))
        ended = time.perf_counter()
    measured = max(ended - warm_until, 1e-9)
    ms = [v * 1000 for v in latencies]
    return {"clients": clients, "seconds": measured, "requests": len(ms), "errors": len(errors),
            "first_error": errors[0] if errors else None, "throughput_rps": len(ms) / measured,
            "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else None, "distinct_answers": len(answers)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", default="", help="path of the JSON body to send (none: a GET)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("The load generator only targets loopback addresses.")
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    body = b""
    if args.body:
        with open(args.body, "rb") as f:
            body = f.read()
    method = "POST" if args.body else "GET"
    return asyncio.run(load(method, args.url, body, headers, args.clients, args.seconds, args.warmup))


if __name__ == "__main__":
    print(json.dumps(main()))
