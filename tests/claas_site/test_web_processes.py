"""Several web processes behind one port (`python -m claas_site.web --processes 2`, what `./claas run` starts):
both serve, a worker's experiment events reach the websockets of each within a second and once each, and
stopping the launcher stops every process."""
from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import time
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any, Iterator
from urllib.parse import urlencode

import aiohttp
import psutil
import pytest
import requests

from tests.service import PYTHON, LiveService

PROCESSES = 2
FAILURES_PER_ADDRESS = 4
EXPERIMENT = {"exp_name": "live", "model": {"architecture": "simple_mlp", "params": {"hidden_size": 32}},
              "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
              "strategy": {"name": "naive"},
              "training": {"epochs": 1, "train_mb_size": 64, "eval_mb_size": 256, "device": "cpu", "seed": 0}}


class SeveralWebProcesses(LiveService):
    """The live service with the launcher of `./claas run` in place of a single web process."""

    def start_web(self) -> None:
        self.web = self._spawn("web", [PYTHON, "-m", "claas_site.web", "-b", "127.0.0.1", "-p", str(self.port),
                                       "--processes", str(PROCESSES)])
        self.wait_healthy()

    def web_processes(self) -> list[psutil.Process]:
        return psutil.Process(self.web.pid).children()


@pytest.fixture(scope="module")
def several(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeveralWebProcesses]:
    live = SeveralWebProcesses(tmp_path_factory.mktemp("web-processes"),
                               env={"CLAAS_LOGIN_FAILURES_PER_IP": f"{FAILURES_PER_ADDRESS}/15min"}).start()
    yield live
    live.stop()


def session_cookie(base_url: str, username: str, password: str) -> str:
    """A browser's sign-in (the form's CSRF token, then the POST); the session cookie it sets."""
    session = requests.Session()
    form = session.get(f"{base_url}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    answer = session.post(f"{base_url}/accounts/login/",
                          data={"username": username, "password": password, "csrfmiddlewaretoken": token},
                          headers={"Referer": f"{base_url}/accounts/login/"}, allow_redirects=False, timeout=30)
    assert answer.status_code == 302, answer.text[:500]
    return session.cookies["sessionid"]


def serving_pid(processes: list[psutil.Process], client_port: int, server_port: int) -> int | None:
    """The web process holding the server end of the connection from `client_port`."""
    for process in processes:
        for conn in process.net_connections(kind="tcp"):
            if conn.laddr and conn.raddr and conn.laddr.port == server_port and conn.raddr.port == client_port:
                return process.pid
    return None


def test_the_launcher_starts_the_processes_on_one_port(several):
    processes = several.web_processes()
    assert len(processes) == PROCESSES
    for _ in range(5):
        assert requests.get(several.base_url + "/healthz", timeout=30).status_code == 200
    # Every process listens on the same socket: the port is one, the processes several.
    listening = {p.pid: [c.laddr.port for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
                 for p in processes}
    assert all(ports == [several.port] for ports in listening.values()), listening


def test_a_workers_events_reach_a_websocket_on_each_process_within_a_second_and_once(several):
    alice = several.user("alice")
    created = alice.post("/base-scenario/setup/", EXPERIMENT)
    assert created.status_code == 201, created.text
    cookie = session_cookie(several.base_url, "alice", alice.password)
    processes = several.web_processes()

    async def scenario() -> tuple[dict[int, list[tuple[float, dict[str, Any]]]], int]:
        headers = {"Origin": several.base_url, "Cookie": f"sessionid={cookie}"}
        url = several.base_url.replace("http", "ws") + "/ws/experiments/alice/live/"
        async with aiohttp.ClientSession() as session:
            # New connections until a socket is held by each process (the kernel picks the process).
            sockets: dict[int, aiohttp.ClientWebSocketResponse] = {}
            spare = []
            for _ in range(60):
                ws = await session.ws_connect(url, headers=headers)
                pid = serving_pid(processes, ws.get_extra_info("sockname")[1], several.port)
                if pid is None or pid in sockets:
                    spare.append(ws)
                else:
                    sockets[pid] = ws
                if len(sockets) == PROCESSES:
                    break
            assert len(sockets) == PROCESSES, "every new connection went to one process"
            for ws in spare:
                await ws.close()
            # Replayed stored events first (the experiment's creation may have stored some).
            received: dict[int, list[tuple[float, dict[str, Any]]]] = {pid: [] for pid in sockets}
            started = time.time()
            queued = await asyncio.to_thread(alice.post, "/base-scenario/alice/exec/live")
            assert queued.status_code == 202, queued.text

            async def listen(pid: int, ws: aiohttp.ClientWebSocketResponse) -> None:
                while True:
                    message = await ws.receive_json(timeout=300)
                    received[pid].append((time.time(), message))
                    if message.get("type") == "status" and message.get("status") in ("completed", "failed"):
                        # Anything sent after the last event would be a duplicate: wait for it a while.
                        try:
                            extra = await ws.receive_json(timeout=2)
                            received[pid].append((time.time(), extra))
                        except asyncio.TimeoutError:
                            pass
                        return

            await asyncio.gather(*(listen(pid, ws) for pid, ws in sockets.items()))
            for ws in sockets.values():
                await ws.close()
            return received, started

    received, started = asyncio.run(scenario())
    stored = alice.get("/api/experiments/live/events").json()
    assert stored[-1]["status"] == "completed", stored[-1]
    stored_ids = [e["id"] for e in stored]
    for pid, events in received.items():
        ids = [message["id"] for _, message in events]
        assert ids == stored_ids, f"process {pid}: {ids} against the stored {stored_ids}"  # each once, in order
        late = [(message["id"], round(at - datetime.fromisoformat(message["time"]).timestamp(), 2))
                for at, message in events if datetime.fromisoformat(message["time"]).timestamp() > started]
        assert late and all(delay <= 1.0 for _, delay in late), f"process {pid}: (id, delay s) {late}"


def wrong_sign_in(port: int, username: str, *, source: str, forwarded: str) -> int:
    """A browser's sign-in with a wrong password from the loopback address `source`, claiming to be
    `forwarded` in X-Forwarded-For; the status of the answer (200: the form again, 429: locked)."""
    def exchange(method: str, body: str = "", headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        connection.request(method, "/accounts/login/", body=body or None,
                           headers={"X-Forwarded-For": forwarded, "X-Real-IP": forwarded, **(headers or {})})
        response = connection.getresponse()
        response.body = response.read().decode()  # type: ignore[attr-defined]
        connection.close()
        return response

    form = exchange("GET")
    cookie = SimpleCookie(form.getheader("Set-Cookie"))["csrftoken"].value
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.body).group(1)  # type: ignore[attr-defined]
    body = urlencode({"username": username, "password": "wrong", "csrfmiddlewaretoken": token})
    return exchange("POST", body, {"Cookie": f"csrftoken={cookie}", "Referer": f"http://127.0.0.1:{port}/accounts/login/",
                                   "Content-Type": "application/x-www-form-urlencoded"}).status


def test_sign_in_limits_count_the_real_client_address_not_a_forwarded_one(several):
    """Every process sees the connection's own address (REMOTE_ADDR); X-Forwarded-For is not believed
    unless the server is told to trust a proxy, so a client cannot make each attempt look new."""
    statuses = [wrong_sign_in(several.port, f"nobody-{i}", source="127.0.0.1", forwarded=f"10.0.0.{i}")
                for i in range(FAILURES_PER_ADDRESS + 1)]
    assert statuses == [200] * FAILURES_PER_ADDRESS + [429]
    # Another address on the same machine is its own client: not locked by the first one's failures.
    assert wrong_sign_in(several.port, "nobody-else", source="127.0.0.2", forwarded="127.0.0.1") == 200


def test_stopping_the_launcher_stops_every_web_process(several):
    processes = several.web_processes()
    assert len(processes) == PROCESSES
    os.kill(several.web.pid, signal.SIGTERM)  # the launcher alone: it stops its processes itself
    assert several.web.wait(timeout=30) == 0
    gone, alive = psutil.wait_procs(processes, timeout=5)
    assert alive == []
    with pytest.raises(requests.ConnectionError):
        requests.get(several.base_url + "/healthz", timeout=5)


def test_when_one_web_process_dies_the_launcher_stops_the_others_and_fails(several):
    several.start_web()
    first, second = several.web_processes()
    first.kill()
    assert several.web.wait(timeout=30) != 0
    assert psutil.wait_procs([second], timeout=5)[1] == []
