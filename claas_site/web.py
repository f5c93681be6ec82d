"""The web server of `./claas run`: N uvicorn processes behind one port.

`python -m claas_site.web [-b HOST] [-p PORT] [--processes N] [uvicorn options]` binds the listening socket
once and starts N `uvicorn --fd` children that accept from it (the kernel hands each new connection to one
of them). N is `--processes`, else CLAAS_WEB_PROCESSES, else (0 or unset) the cores this process may run
on. With N=1 it becomes a plain `uvicorn --host HOST --port PORT` (exec, no launcher left). SIGTERM or
SIGINT stops every child; when one child exits, the others are stopped and the launcher exits with its
code. Options it does not know go to uvicorn, after its own (`--proxy-headers --forwarded-allow-ips ...`
behind a proxy that sets X-Forwarded-For).

uvicorn was chosen over daphne, hypercorn and granian by measurement (bench/asgi_servers.py, its
figures in bench/BENCHMARKS.md); the options below are the ones measured. The body limits are an ASGI
middleware (clserver/serving/body_limit.py), so they do not depend on the server's internals.

Websocket events reach the sockets of every process: the embedded mode's in-memory channel layer is per
process, and each socket also tails the database (clserver/live.py), so a worker's event is on every
process's sockets within TAIL_INTERVAL_S; in the scaled mode the Redis channel layer pushes it at once.
Nothing here imports Django: the launcher stays a small process.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

APPLICATION = "claas_site.asgi:application"
# httptools parses HTTP/1.1, uvloop runs the event loop, websockets' sans-I/O protocol serves the sockets.
# No lifespan (Django and Channels have none), no Server header, X-Forwarded-* ignored unless asked for
# (sign-in limits count REMOTE_ADDR: a client must not choose its own), and 15 s for requests in
# flight at a stop. The access log follows CLAAS_LOG_LEVEL (INFO writes one line per request).
SERVER_OPTIONS = ("--http", "httptools", "--loop", "uvloop", "--ws", "websockets-sansio", "--lifespan", "off",
                  "--no-server-header", "--no-proxy-headers", "--timeout-graceful-shutdown", "15")
STOP_TIMEOUT_S = 20.0
BACKLOG = 1024


def processes_default() -> int:
    """CLAAS_WEB_PROCESSES, or (0 or unset) as many as the cores this process may run on."""
    value = os.environ.get("CLAAS_WEB_PROCESSES", "").strip()
    try:
        wanted = int(value) if value else 0
    except ValueError:
        raise SystemExit(f"CLAAS_WEB_PROCESSES must be a whole number (0: one per core); it is {value!r}.")
    if wanted < 0:
        raise SystemExit(f"CLAAS_WEB_PROCESSES must be 0 (one per core) or more; it is {value!r}.")
    if wanted:
        return wanted
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def log_level() -> str:
    return os.environ.get("CLAAS_LOG_LEVEL", "INFO").strip().lower() or "info"


def uvicorn_command(*, host: str | None = None, port: int | None = None, fd: int | None = None,
                    extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """One web process: on HOST:PORT, or accepting from the inherited socket `fd`."""
    where = ["--fd", str(fd)] if fd is not None else ["--host", str(host), "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", APPLICATION, *SERVER_OPTIONS, "--log-level", log_level(), *where,
            *extra]


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM when the launcher dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def serve(*, host: str, port: int, processes: int, server_args: list[str]) -> int:
    if processes == 1:
        argv = uvicorn_command(host=host, port=port, extra=server_args)
        os.execv(argv[0], argv)
    if ":" in host:
        raise SystemExit("Several web processes listen on an IPv4 address; for an IPv6 one set "
                         "CLAAS_WEB_PROCESSES=1.")
    sock = listening_socket(host, port)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    argv = uvicorn_command(fd=sock.fileno(), extra=server_args)
    children = [subprocess.Popen(argv, pass_fds=(sock.fileno(),),
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                for _ in range(processes)]
    print(f"CLaaS web: {processes} processes on http://{host}:{sock.getsockname()[1]} "
          f"(pids {' '.join(str(c.pid) for c in children)})", flush=True)
    code = 0
    try:
        while not stopping:
            exited = [c for c in children if c.poll() is not None]
            if exited:
                code = exited[0].returncode or 1
                print(f"CLaaS web: process {exited[0].pid} exited ({exited[0].returncode}); stopping the others",
                      file=sys.stderr, flush=True)
                break
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean stop short
        _stop(children)
        sock.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claas_site.web", description=__doc__.split("\n")[0])
    parser.add_argument("-b", "--bind", default=os.environ.get("CLAAS_HOST", "127.0.0.1"))
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("CLAAS_PORT", "8000")))
    parser.add_argument("--processes", type=int, default=None,
                        help="web processes (default: CLAAS_WEB_PROCESSES, else one per core)")
    args, server_args = parser.parse_known_args(argv)
    if args.processes is not None and args.processes < 0:
        parser.error("--processes must be 0 (one per core) or more")
    processes = args.processes or processes_default()
    return serve(host=args.bind, port=args.port, processes=processes, server_args=server_args)


if __name__ == "__main__":
    sys.exit(main())
