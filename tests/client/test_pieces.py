"""The client's pure pieces: the progress bar's arithmetic and errors from answers that are not CLaaS's JSON."""
from __future__ import annotations

import io

import requests

from claas_client import ClaasError
from claas_client.progress import ProgressBar
from claas_client.transport import error_from


def answer(status: int, body: bytes, content_type: str) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = status, body
    response.headers["Content-Type"] = content_type
    response.url = "http://claas.test/api/x"
    response.request = requests.Request("POST", response.url).prepare()
    return response


def test_the_bar_counts_epochs_over_experiences_and_ends_full():
    out = io.StringIO()
    bar = ProgressBar("e", total=6, options={"file": out, "mininterval": 0})
    bar.event({"type": "epoch_end", "experience": 0, "n_experiences": 3, "epoch": 1, "epochs": 2})
    assert bar.done == 1
    bar.event({"type": "experience_end", "experience": 1, "n_experiences": 3})
    assert bar.done == 4
    bar.event({"type": "status", "status": "running"})
    bar.status("completed")
    bar.close()
    assert bar.done == 6 and "6/6" in out.getvalue()


def test_an_offline_strategy_has_one_unit_so_the_bar_shrinks_to_its_epochs():
    bar = ProgressBar("joint", total=10, enabled=False)
    bar.event({"type": "epoch_end", "experience": 0, "n_experiences": 1, "epoch": 1, "epochs": 2})
    assert (bar.total, bar.done) == (2, 1)


def test_the_servers_sentence_and_details_become_the_error():
    error = error_from(answer(409, b'{"error": "It exists.", "details": {"name": "a"}}', "application/json"))
    assert isinstance(error, ClaasError)
    assert (error.status_code, error.message, error.details) == (409, "It exists.", {"name": "a"})
    assert str(error) == "409: It exists."


def test_an_answer_that_is_not_claas_json_still_says_what_came_back():
    error = error_from(answer(502, b"<html>Bad   gateway</html>", "text/html"))
    assert error.status_code == 502 and error.details == {}
    assert "POST http://claas.test/api/x" in error.message and "Bad gateway" in error.message
