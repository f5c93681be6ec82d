"""What never reaches an API view still answers in the error format under the API's prefixes."""
from __future__ import annotations

from unittest import mock

import pytest
from django.test import Client


@pytest.mark.parametrize("path", ["/api/nothing/here", "/api/models/m/versions/not-a-number",
                                  "/base-scenario/alice/unknown/x"])
def test_an_unknown_api_path_is_a_json_404(db, path):
    response = Client().get(path)
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json() == {"error": f"There is no API endpoint at {path}; see /api/docs/.", "details": {}}


def test_an_unknown_page_stays_an_html_404(db):
    response = Client().get("/no/such/page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_an_unhandled_failure_answers_one_sentence_and_never_the_trace(user):
    # A bug cannot be caused on purpose, so one is planted in the selector the view calls.
    with mock.patch("clserver.experiments.selectors.experiment_list", side_effect=RuntimeError("secret internals")):
        client = Client(raise_request_exception=False)
        client.force_login(user)
        response = client.get("/api/experiments/")
    assert response.status_code == 500
    assert response.json() == {"error": "The server failed to answer this request; the failure is logged.",
                               "details": {}}
    assert b"secret internals" not in response.content
