"""GUI pages: sign-in, what each page serves, and that nothing comes from outside the server."""
from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.test import Client

from clserver.deployments.models import Deployment
from clserver.models import Experiment
from modelfactory.models import RegisteredModel

PAGES = ["/", "/setup/", "/compare/", "/models/", "/deployments/", "/models/some-model/",
         "/deployments/some-deployment/"]


@pytest.fixture
def browser_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", PAGES + ["/experiments/anything/"])
def test_pages_ask_anonymous_visitors_to_sign_in(db, path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_sign_in_through_the_form_then_sign_out(user):
    client = Client()
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert b"did not match" in wrong.content
    signed_in = client.post("/accounts/login/", {"username": "alice", "password": "alice-password"}, follow=True)
    assert signed_in.redirect_chain[-1][0] == "/"
    assert b"alice" in signed_in.content
    out = client.post("/accounts/logout/", follow=True)
    assert out.redirect_chain[-1][0] == "/accounts/login/"
    assert client.get("/").status_code == 302


@pytest.fixture
def owned(user) -> None:
    """The model and deployment the detail pages in PAGES show (another user's would be a 404)."""
    RegisteredModel.objects.create(owner=user, name="some-model", architecture="simple_mlp", params={})
    Deployment.objects.create(owner=user, name="some-deployment", source={}, architecture="simple_mlp",
                              model_params={}, detector={}, update_options={})


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_the_navigation_and_only_local_scripts(browser_client, owned, path):
    response = browser_client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    for label, href in [("Dashboard", "/"), ("New experiment", "/setup/"), ("Compare", "/compare/"),
                        ("Models", "/models/"), ("Deployments", "/deployments/"), ("API docs", "/api/docs/"),
                        ("MLflow", settings.MLFLOW_UI_URL)]:
        assert re.search(rf'href="{re.escape(href)}"[^>]*>{label}</a>', html), label
    # Offline: scripts and stylesheets are served by CLaaS itself, never by a CDN.
    for src in re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html):
        assert src.startswith("/static/"), src
    assert 'name="csrf-token"' in html


def test_the_chart_library_is_served_from_the_npm_package(browser_client):
    response = browser_client.get("/static/vendor/chart.js/dist/chart.umd.js")
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"Chart.js" in body[:2000]


def test_the_experiment_page_is_for_its_owner_only(user, other_user, browser_client):
    Experiment.objects.create(owner=user, name="mine", options={"benchmark": {"n_experiences": 2}})
    Experiment.objects.create(owner=other_user, name="theirs", options={})
    mine = browser_client.get("/experiments/mine/")
    assert mine.status_code == 200
    assert b'data-name="mine"' in mine.content and b'role="progressbar"' in mine.content
    assert browser_client.get("/experiments/theirs/").status_code == 404
    assert browser_client.get("/experiments/missing/").status_code == 404


def test_the_setup_form_carries_the_training_schema(browser_client):
    html = browser_client.get("/setup/").content.decode()
    schema = re.search(r'<script id="training-params" type="application/json">(.*?)</script>', html).group(1)
    assert '"name": "epochs"' in schema and '"default": 10' in schema
