"""The web server of `./claas run`: N daphne processes behind one port.

`python -m claas_site.web [-b HOST] [-p PORT] [--processes N]` binds the listening socket once and starts
N `daphne --fd` children that accept from it (the kernel hands each new connection to one of them). N is
`--processes`, else CLAAS_WEB_PROCESSES, else (0 or unset) the cores this process may run on. With N=1
it becomes a plain `daphne -b HOST -p PORT` (exec, no launcher left). SIGTERM or SIGINT stops every
child; when one child exits, the others are stopped and the launcher exits with its code.

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
from pathlib import Path

APPLICATION = "claas_site.asgi:application"
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


def daphne_command() -> list[str]:
    """daphne's console script beside the interpreter, else `python -m daphne` from the same interpreter."""
    script = Path(sys.executable).parent / "daphne"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daphne"]


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


def serve(*, host: str, port: int, processes: int, daphne_args: list[str]) -> int:
    if processes == 1:
        argv = [*daphne_command(), "-b", host, "-p", str(port), *daphne_args, APPLICATION]
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
    argv = [*daphne_command(), "--fd", str(sock.fileno()), *daphne_args, APPLICATION]
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
    args, daphne_args = parser.parse_known_args(argv)
    if args.processes is not None and args.processes < 0:
        parser.error("--processes must be 0 (one per core) or more")
    processes = args.processes or processes_default()
    return serve(host=args.bind, port=args.port, processes=processes, daphne_args=daphne_args)


if __name__ == "__main__":
    sys.exit(main())
