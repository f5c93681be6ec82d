"""Page views of the GUI: they render templates; data comes from selectors and the API."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from claas_site.errors import NotFound
from clserver.experiments import selectors
from clserver.deployments.models import Deployment
from clserver.experiments.options import TRAINING_PARAMS
from modelfactory.models import RegisteredModel


def _page(request: HttpRequest, template: str, nav: str, **context: Any) -> HttpResponse:
    return render(request, f"frontend/{template}", {"nav": nav, "mlflow_url": settings.MLFLOW_UI_URL, **context})


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return _page(request, "dashboard.html", "dashboard")


@login_required
def experiment_new(request: HttpRequest) -> HttpResponse:
    # The training block is not a registry entry, so its schema travels with the page;
    # the other blocks are read from the registry endpoints by the form script.
    return _page(request, "experiment_new.html", "new",
                 training_params=[p.describe() for p in TRAINING_PARAMS],
                 copy_from=request.GET.get("from", ""), registered=request.GET.get("registered", ""))


@login_required
def experiment_detail(request: HttpRequest, exp_name: str) -> HttpResponse:
    try:
        experiment = selectors.experiment_get(owner=request.user, name=exp_name)
    except NotFound as exc:
        raise Http404(exc.message)
    return _page(request, "experiment_detail.html", "dashboard", experiment=experiment)


@login_required
def compare(request: HttpRequest) -> HttpResponse:
    return _page(request, "compare.html", "compare", selected=request.GET.getlist("exp"))


@login_required
def models(request: HttpRequest) -> HttpResponse:
    return _page(request, "models.html", "models")


@login_required
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    # The page's data comes from the API; another user's model is a 404 here too, like a missing one.
    get_object_or_404(RegisteredModel, owner=request.user, name=name)
    return _page(request, "model_detail.html", "models", model_name=name)


@login_required
def deployments(request: HttpRequest) -> HttpResponse:
    return _page(request, "deployments.html", "deployments",
                 training_params=[p.describe() for p in TRAINING_PARAMS])


@login_required
def deployment_detail(request: HttpRequest, name: str) -> HttpResponse:
    get_object_or_404(Deployment, owner=request.user, name=name)
    return _page(request, "deployment_detail.html", "deployments", deployment_name=name)
