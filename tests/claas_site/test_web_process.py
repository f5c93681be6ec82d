"""The web process lets go of finished requests at once, keeps long-lived objects out of the collector, and
hooks only the daphne release its hooks were written for."""
from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import types
from typing import Any

import pytest
from daphne.server import Server

from clserver.serving import body_limit
from clserver.serving import daphne_reaping
from clserver.serving.cache import LruCache
from tests.service import ROOT


class Protocol:
    """Stands for one HTTP request's protocol object: daphne only hashes it and hands it back."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []

    def handle_reply(self, message: dict[str, Any]) -> None:
        self.replies.append(message)


@pytest.fixture
def server() -> Server:
    daphne_reaping.daphne_install()
    server = Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])  # never started
    server.connections = {}  # what `Server.run` sets up before listening
    return server


def serve(server: Server, app: Any, disconnect_first: bool = False) -> Protocol:
    """One request through daphne's own server bookkeeping: connect, run the app, disconnect."""
    server.application = app
    protocol = Protocol()

    async def main() -> None:
        server.protocol_connected(protocol)
        queue = server.create_application(protocol, {"type": "http", "path": "/"})
        queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        if disconnect_first:
            server.protocol_disconnected(protocol)
        instance = server.connections[protocol]["application_instance"]
        await asyncio.wait([instance])
        if not disconnect_first:
            # Twisted finishes the request inside the app's last `send`; here, once it has returned.
            server.protocol_disconnected(protocol)
            server.protocol_disconnected(protocol)  # connectionLost after finish: a second notice
        await asyncio.sleep(0)  # the done callback runs on the next turn of the loop

    asyncio.run(main())
    return protocol


async def answering_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_finished_request_leaves_daphnes_books_at_once(server: Server):
    protocol = serve(server, answering_app)
    assert [m["type"] for m in protocol.replies] == ["http.response.start", "http.response.body"]
    assert protocol not in server.connections  # not left for the once-a-second sweep


def test_a_request_whose_client_left_first_is_let_go_when_its_app_ends(server: Server):
    protocol = serve(server, answering_app, disconnect_first=True)
    assert protocol.replies == []  # daphne drops replies to a disconnected client
    assert protocol not in server.connections


def test_a_request_still_running_is_kept(server: Server):
    gate = asyncio.Event()

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await gate.wait()

    protocol = Protocol()

    async def main() -> None:
        server.application = slow_app
        server.protocol_connected(protocol)
        server.create_application(protocol, {"type": "http", "path": "/"})
        server.protocol_disconnected(protocol)
        await asyncio.sleep(0.01)
        assert protocol in server.connections  # the sweep still closes it if it outlives its timeout
        gate.set()
        await asyncio.sleep(0.01)
        assert protocol not in server.connections

    asyncio.run(main())


def test_an_application_error_is_logged_as_daphne_would(server: Server, caplog):
    async def failing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("the view broke")

    with caplog.at_level(logging.ERROR, logger="daphne.server"):
        protocol = serve(server, failing_app, disconnect_first=True)
    assert protocol not in server.connections
    assert "Exception inside application: the view broke" in caplog.text


def test_what_a_first_model_load_imports_is_left_out_of_later_collections(monkeypatch):
    cache = LruCache(2)

    def load() -> list[list[int]]:
        monkeypatch.setitem(sys.modules, "stands_for_torch", types.ModuleType("stands_for_torch"))
        return [[i] for i in range(1000)]  # objects the collector tracks, alive as long as the cache

    before = gc.get_freeze_count()
    model = cache.get("key", load)
    assert gc.get_freeze_count() >= before + 1000
    assert cache.get("key", lambda: None) is model  # cached: loaded once

    frozen = gc.get_freeze_count()
    cache.get("other", lambda: [[i] for i in range(1000)])  # imports nothing: no freeze
    assert gc.get_freeze_count() == frozen


def test_a_process_that_froze_its_objects_still_tears_them_down_at_exit():
    """Frozen objects are unfrozen at exit, so the interpreter's last collection finalizes them (extension
    modules that count their live objects report the ones it misses as leaks)."""
    code = ("import gc, sys\n"
            "class Noisy:\n"
            "    def __del__(self):\n"
            "        print('finalized', flush=True)\n"
            "noisy = Noisy()\n"
            "noisy.cycle = noisy  # garbage only a collection frees\n"
            "if sys.argv[1] == 'claas':\n"
            "    from clserver.serving.long_lived import freeze_long_lived\n"
            "    freeze_long_lived()\n"
            "else:\n"
            "    gc.freeze()\n"
            "del noisy\n")
    runs = {how: subprocess.run([sys.executable, "-c", code, how], cwd=ROOT, capture_output=True, text=True,
                                timeout=120) for how in ("claas", "plain")}
    assert all(done.returncode == 0 for done in runs.values()), {how: d.stderr for how, d in runs.items()}
    assert runs["claas"].stdout == "finalized\n"
    assert runs["plain"].stdout == ""  # a bare gc.freeze() leaves it behind: what the test tells apart


def test_the_daphne_hooks_were_written_for_the_installed_daphne_and_twisted():
    """clserver/serving/body_limit.py and daphne_reaping.py mirror these releases' internals: a new release fails
    here (and the web process refuses to start) until the hooks are checked against it."""
    import daphne
    import twisted

    assert daphne.__version__ == body_limit.DAPHNE_VERSION
    assert twisted.__version__.startswith(body_limit.TWISTED_MAJOR)
    body_limit.daphne_version_check()


def test_another_daphne_release_stops_the_web_process_from_starting(monkeypatch):
    import daphne
    from daphne.http_protocol import WebRequest

    monkeypatch.setattr(daphne, "__version__", "4.3.0")
    monkeypatch.delattr(WebRequest, "_claas_body_limit", raising=False)
    hooked = WebRequest.gotLength
    with pytest.raises(RuntimeError, match="hook daphne 4.2.3 .* this is daphne 4.3.0"):
        body_limit.daphne_install()
    assert WebRequest.gotLength is hooked  # nothing was hooked half-way
