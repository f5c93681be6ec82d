"""Multi-tenant isolation: every route that names a resource, tried by another user, finds nothing.

Annabel owns an experiment, a dataset, a registered model, a deployment and an update; Benedict
tries every method of every such route on them. Each answer must be the answer for a name
that does not exist (404, or 403 for a foreign `<username>` in the path), word for word, and
never mention Annabel. The list of routes is read from the URL map, so a new route without a
probe here fails the suite until it is covered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from asgiref.sync import async_to_sync
from tests.websocket import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from clserver.deployments.models import Deployment, DeploymentUpdate
from clserver.models import Dataset, Experiment, JobStatus
from modelfactory.models import ModelVersion, RegisteredModel
from tests.reliability.resources import (
    INPUT,
    dataset_upload,
    deployment_create,
    experiment_completed,
    model_register,
    token_client,
    weights_file,
)

# Each test runs in a transaction that is rolled back; the module's world is committed before.
pytestmark = pytest.mark.django_db

OWNER, OTHER = "annabel", "benedict"
EXP, DATA, MODEL, DEP = "vault-exp", "vault-data", "vault-model", "vault-dep"
MISSING = "no-such-thing"


@dataclass
class World:
    owner: Any
    other: Any
    owner_api: APIClient
    other_api: APIClient
    anonymous: APIClient
    other_browser: Client
    owner_browser: Client
    other_session: str
    update_id: int
    files: Path
    snapshot: dict[str, Any] = field(default_factory=dict)


def snapshot(owner: Any) -> dict[str, Any]:
    """What another user must not be able to change."""
    deployment = Deployment.objects.get(owner=owner, name=DEP)
    return {
        "experiments": sorted(Experiment.objects.filter(owner=owner).values_list("name", "status")),
        "datasets": sorted(Dataset.objects.filter(owner=owner).values_list("name", flat=True)),
        "versions": sorted(ModelVersion.objects.filter(model__owner=owner).values_list("model__name", "version")),
        "deployment": (deployment.champion_version, deployment.samples_seen, deployment.batches.count(),
                       deployment.drift_checks.count()),
        "updates": sorted(DeploymentUpdate.objects.filter(deployment=deployment).values_list("id", "status",
                                                                                              "cancel_requested")),
        "token": Token.objects.get(user=owner).key,
    }


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[World]:
    """Annabel's resources, committed once for the module (every probe is read-only when it is refused)."""
    files = tmp_path_factory.mktemp("isolation")
    with override_settings(DATA_DIR=files, CHECKPOINT_DIR=files / "checkpoints",
                           DEPLOYMENT_DIR=files / "deployments"), django_db_blocker.unblock():
        cache.clear()
        users = get_user_model().objects
        owner = users.create_user(username=OWNER, password="annabel-password")
        other = users.create_user(username=OTHER, password="benedict-password")
        owner_api, other_api = token_client(owner), token_client(other)

        experiment_completed(owner=owner, name=EXP)
        dataset_upload(owner_api, DATA)
        model_register(owner_api, MODEL)
        # Benedict has a model of his own, to name Annabel's dataset as its reference.
        model_register(other_api, "benedict-model")
        deployment_create(owner_api, DEP, EXP)
        deployment = Deployment.objects.get(owner=owner, name=DEP)
        assert owner_api.post(f"/api/deployments/{DEP}/ingest", {"inputs": INPUT * 20, "labels": [3] * 20},
                              format="json").status_code == 200
        # A queued update to cancel (created as a row: no worker runs in this module).
        update = DeploymentUpdate.objects.create(
            deployment=deployment, trigger="manual", options=deployment.update_options, base_version=1,
            n_samples=0, samples_seen_total=0, status=JobStatus.QUEUED)

        owner_browser, other_browser = Client(), Client()
        owner_browser.force_login(owner)
        other_browser.force_login(other)
        state = World(owner, other, owner_api, other_api, APIClient(), other_browser, owner_browser,
                      other_browser.cookies[settings.SESSION_COOKIE_NAME].value, update.number, files)
        state.snapshot = snapshot(owner)
        try:
            yield state
        finally:
            Deployment.objects.filter(owner__in=[owner, other]).delete()
            Experiment.objects.filter(owner__in=[owner, other]).delete()
            RegisteredModel.objects.filter(owner__in=[owner, other]).delete()
            Session.objects.all().delete()
            users.filter(pk__in=[owner.pk, other.pk]).delete()
            cache.clear()


@pytest.fixture
def unblocked(world, django_db_blocker) -> Iterator[World]:
    with override_settings(DATA_DIR=world.files, CHECKPOINT_DIR=world.files / "checkpoints",
                           DEPLOYMENT_DIR=world.files / "deployments"), django_db_blocker.unblock():
        yield world


# --- the probes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    route: str
    kwargs: dict[str, Any]
    method: str
    body: Any = None
    multipart: bool = False
    gui: bool = False

    def path(self, **override: Any) -> str:
        return reverse(self.route, kwargs={**self.kwargs, **override})

    @property
    def resource_key(self) -> str:
        return "exp_name" if "exp_name" in self.kwargs else "name"

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.route}"


def _probes() -> list[Probe]:
    own = {"username": OTHER, "exp_name": EXP}
    out = [Probe(r, own, m) for r, m in (("base-exec", "post"), ("base-results", "get"), ("base-status", "get"))]
    out += [Probe("experiment-detail", {"exp_name": EXP}, m) for m in ("get", "delete")]
    out += [Probe(r, {"exp_name": EXP}, m) for r, m in (("experiment-cancel", "post"), ("experiment-events", "get"),
                                                        ("experiment-model", "get"))]
    out += [Probe("dataset-detail", {"name": DATA}, m) for m in ("get", "delete")]
    out += [Probe("model-detail", {"name": MODEL}, m) for m in ("get", "delete")]
    out += [Probe("model-version-list", {"name": MODEL}, "get"),
            Probe("model-version-list", {"name": MODEL}, "post", "weights", multipart=True),
            Probe("model-version-detail", {"name": MODEL, "version": 1}, "get"),
            Probe("model-version-download", {"name": MODEL, "version": 1}, "get")]
    out += [Probe("deployment-detail", {"name": DEP}, m) for m in ("get", "delete")]
    out += [Probe("deployment-predict", {"name": DEP}, "post", {"inputs": INPUT}),
            Probe("deployment-ingest", {"name": DEP}, "post", {"inputs": INPUT, "labels": [1]}),
            Probe("deployment-update", {"name": DEP}, "post", {}),
            Probe("deployment-update-cancel", {"name": DEP, "update_id": 0}, "post"),
            Probe("deployment-rollback", {"name": DEP}, "post", {"version": 1}),
            Probe("deployment-version-download", {"name": DEP, "version": 1}, "get"),
            Probe("deployment-events", {"name": DEP}, "get")]
    out += [Probe("experiment-page", {"exp_name": EXP}, "get", gui=True),
            Probe("model-page", {"name": MODEL}, "get", gui=True),
            Probe("deployment-page", {"name": DEP}, "get", gui=True)]
    return out


PROBES = _probes()
USERNAME_ROUTES = ("base-exec", "base-results", "base-status")


def _routes(patterns: list, prefix: str = "") -> Iterator[tuple[str, str, set[str]]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace == "admin":  # staff only; see test_the_admin_is_for_staff_only
                continue
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern) and entry.name:
            yield entry.name, prefix + str(entry.pattern), set(entry.pattern.converters)


def send(client: Any, probe: Probe, path: str, world: World) -> Any:
    kwargs: dict[str, Any] = {}
    if probe.multipart:
        kwargs = {"data": {"file": weights_file(hidden_size=16)}, "format": "multipart"}
    elif probe.body is not None:
        kwargs = {"data": probe.body, "format": "json"}
    return getattr(client, probe.method)(path, **kwargs)


def leaks(response: Any, asked: str) -> list[str]:
    """Annabel's name and the names of her resources that the caller did not send."""
    text = response.content.decode(errors="replace")
    return [name for name in (OWNER, EXP, DATA, MODEL, DEP) if name != asked and name in text]


def answer(response: Any, *names: str) -> tuple[int, str]:
    """Status and body with the names the caller sent blanked out, for word-for-word comparison."""
    text = response.content.decode(errors="replace")
    for name in names:
        text = text.replace(name, "<name>")
    return response.status_code, text


def test_every_route_that_names_a_resource_has_a_probe():
    named = {name for name, _, converters in _routes(get_resolver().url_patterns)
             if converters & {"exp_name", "name", "username", "update_id", "version"}}
    assert named == {p.route for p in PROBES}


@pytest.mark.parametrize("probe", PROBES, ids=str)
def test_another_users_resource_answers_like_a_missing_one(unblocked, probe):
    world = unblocked
    key = probe.resource_key
    update = {"update_id": world.update_id} if "update_id" in probe.kwargs else {}
    client = world.other_browser if probe.gui else world.other_api
    theirs = send(client, probe, probe.path(**update), world)
    missing = send(client, probe, probe.path(**{key: MISSING, **update}), world)
    assert theirs.status_code == 404, (theirs.status_code, theirs.content[:300])
    assert answer(theirs, probe.kwargs[key]) == answer(missing, MISSING)
    assert not leaks(theirs, probe.kwargs[key])
    assert snapshot(world.owner) == world.snapshot
    if probe.method == "get":  # the probe is not vacuous: the owner reaches the same path
        owner = world.owner_browser if probe.gui else world.owner_api
        own = probe.path(**({"username": OWNER} if "username" in probe.kwargs else {}), **update)
        assert getattr(owner, "get")(own).status_code == 200


@pytest.mark.parametrize("probe", [p for p in PROBES if p.route in USERNAME_ROUTES], ids=str)
def test_another_users_name_in_the_path_is_403(unblocked, probe):
    theirs = send(unblocked.other_api, probe, probe.path(username=OWNER), unblocked)
    mine = send(unblocked.other_api, probe, probe.path(username=OWNER, exp_name=MISSING), unblocked)
    assert theirs.status_code == 403
    assert theirs.json() == mine.json() == {"error": "The username in the path is not the authenticated user.",
                                             "details": {}}
    assert snapshot(unblocked.owner) == unblocked.snapshot


def test_another_users_update_id_under_ones_own_deployment_is_a_404(unblocked):
    world = unblocked
    # Benedict's own deployment name does not exist, so his lookup fails first; an update id alone
    # never reaches Annabel's update.
    response = world.other_api.post(f"/api/deployments/{DEP}/updates/{world.update_id}/cancel")
    assert response.status_code == 404
    assert world.owner_api.post(f"/api/deployments/{DEP}/updates/{world.update_id + 999}/cancel").status_code == 404
    assert snapshot(world.owner) == world.snapshot


@pytest.mark.parametrize("path", ["/api/experiments/", "/api/datasets/", "/api/models/", "/api/deployments/"])
def test_lists_hold_only_ones_own(unblocked, path):
    theirs = unblocked.other_api.get(path)
    assert theirs.status_code == 200
    assert not leaks(theirs, "")
    assert leaks(unblocked.owner_api.get(path), "")


REFERENCES = [
    ("/base-scenario/setup/", {"exp_name": "b1", "from_experiment": EXP}, EXP),
    ("/base-scenario/setup/", {"exp_name": "b2", "model": {"registered": MODEL}}, MODEL),
    ("/base-scenario/setup/", {"exp_name": "b3", "benchmark": {"name": "dataset", "dataset": DATA}}, DATA),
    ("/api/deployments/", {"name": "b4", "source": {"exp_name": EXP}}, EXP),
    ("/api/deployments/", {"name": "b5", "source": {"registered": MODEL, "reference": DATA}}, MODEL),
    ("/api/deployments/", {"name": "b6", "source": {"registered": "benedict-model", "reference": DATA}}, DATA),
]


@pytest.mark.parametrize("path, body, name", REFERENCES, ids=[r[2] + "-in-" + r[0] for r in REFERENCES])
def test_naming_another_users_resource_in_a_body_is_like_naming_a_missing_one(unblocked, path, body, name):
    def with_name(value: Any, new: str) -> Any:
        if isinstance(value, dict):
            return {k: with_name(v, new) for k, v in value.items()}
        return new if value == name else value

    theirs = unblocked.other_api.post(path, body, format="json")
    missing = unblocked.other_api.post(path, with_name(body, MISSING), format="json")
    assert theirs.status_code == 400
    assert answer(theirs, name) == answer(missing, MISSING)
    assert not leaks(theirs, name)
    assert not Experiment.objects.filter(owner=unblocked.other).exists()
    assert not Deployment.objects.filter(owner=unblocked.other).exists()


@pytest.mark.parametrize("probe", [p for p in PROBES if not p.gui], ids=str)
def test_unauthenticated_requests_are_401(unblocked, probe):
    update = {"update_id": unblocked.update_id} if "update_id" in probe.kwargs else {}
    path = probe.path(**({"username": OWNER} if "username" in probe.kwargs else {}), **update)
    response = send(unblocked.anonymous, probe, path, unblocked)
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication credentials were not provided.", "details": {}}
    assert snapshot(unblocked.owner) == unblocked.snapshot


@pytest.mark.parametrize("path", ["/api/experiments/", "/api/datasets/", "/api/models/", "/api/deployments/",
                                  "/api/strategies/", "/api/benchmarks/", "/api/architectures/",
                                  "/api/optimizers/", "/api/detectors/", "/api/auth/token/rotate"])
def test_unauthenticated_lists_and_registries_are_401(unblocked, path):
    method = "post" if path.endswith("rotate") else "get"
    assert getattr(unblocked.anonymous, method)(path).status_code == 401


def test_stored_files_are_not_served_by_url(unblocked):
    dataset = Dataset.objects.get(owner=unblocked.owner, name=DATA)
    version = ModelVersion.objects.get(model__owner=unblocked.owner, model__name=MODEL)
    for relative in (dataset.file, version.weights_file):
        assert (settings.DATA_DIR / relative).is_file()
        assert unblocked.owner_browser.get("/" + relative).status_code == 404
        assert unblocked.owner_browser.get(settings.MEDIA_URL + relative.split("/", 1)[1]).status_code == 404


def test_the_admin_is_for_staff_only(unblocked):
    response = unblocked.other_browser.get("/admin/auth/user/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("path, code", [
    (f"/ws/experiments/{OWNER}/{EXP}/", 4403), (f"/ws/experiments/{OTHER}/{EXP}/", 4404),
    (f"/ws/deployments/{OWNER}/{DEP}/", 4403), (f"/ws/deployments/{OTHER}/{DEP}/", 4404),
])
def test_websockets_refuse_another_users_resource(unblocked, path, code):
    from claas_site.asgi import application

    async def connect(cookie: str | None) -> tuple[bool, int | None]:
        headers = [(b"origin", b"http://localhost")]
        if cookie:
            headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, close_code = await communicator.connect(timeout=10)
        if connected:
            await communicator.disconnect()
        return connected, close_code

    assert async_to_sync(connect)(unblocked.other_session) == (False, code)
    assert async_to_sync(connect)(None) == (False, 4403)


# --- token rotation --------------------------------------------------------------------------------
def test_rotating_a_token_retires_the_old_one_at_once(unblocked):
    world = unblocked
    old = Token.objects.get(user=world.other).key
    response = world.other_api.post("/api/auth/token/rotate")
    assert response.status_code == 201
    new = response.json()["token"]
    assert new != old and len(new) == 40
    stale = world.other_api.get("/api/experiments/")
    assert stale.status_code == 401 and stale.json()["error"] == "The token or session is not valid."
    world.other_api.credentials(HTTP_AUTHORIZATION=f"Token {new}")
    assert world.other_api.get("/api/experiments/").status_code == 200
    # The signed-in browser keeps working, and Annabel's token is untouched.
    assert world.other_browser.get("/api/experiments/").status_code == 200
    assert Token.objects.get(user=world.owner).key == world.snapshot["token"]
