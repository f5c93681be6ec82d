"""Reads of the CL server."""
from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from claas_site.errors import Forbidden, NotFound
from clserver.models import Experiment, ExperimentEvent


def path_user_check(*, user: Any, username: str) -> None:
    """`<username>` in a path must be the caller."""
    if user.username != username:
        raise Forbidden("The username in the path is not the authenticated user.")


def path_public(path: str) -> str:
    """A stored file's path as users see it: relative to the data dir (results written before
    paths were stored that way held absolute ones); never an absolute server path."""
    pure = PurePath(path)
    if not pure.is_absolute():
        return path
    try:
        return str(pure.relative_to(settings.DATA_DIR))
    except ValueError:
        return pure.name


def text_paths_hidden(text: str) -> str:
    """`text` (an error message) with paths under the data dir made relative to it."""
    if not text:  # no error (every status answer of a healthy run): no need to resolve the data dir
        return text
    for root in {str(settings.DATA_DIR), str(Path(settings.DATA_DIR).resolve())}:
        # The root itself, not a longer name that starts with it (/data/x, not /data/x2).
        text = re.sub(re.escape(root) + r"(/|(?![\w-]|\.\w))", lambda m: "" if m.group(1) else ".", text)
    return text


def experiment_list(*, owner: Any) -> QuerySet[Experiment]:
    return Experiment.objects.filter(owner=owner)


def experiment_get(*, owner: Any, name: str) -> Experiment:
    experiment = Experiment.objects.filter(owner=owner, name=name).first()
    if experiment is None:
        raise NotFound(f"You have no experiment named '{name}'.")
    return experiment


def experiment_events(*, experiment: Experiment, after: int = 0, limit: int = 1000) -> QuerySet[ExperimentEvent]:
    return experiment.events.filter(id__gt=after).order_by("id")[:limit]


def experiment_results(*, experiment: Experiment) -> dict[str, Any]:
    """The results document: stored results, with the current status (partial while running)."""
    body = {
        "exp_name": experiment.name,
        "status": experiment.status,
        "config": experiment.options,
        "metrics": {},
        "experiences": [],
        "cost": {},
        "model": None,
        "mlflow": None,
        **experiment.results,
    }
    if isinstance(body["model"], dict) and "save_path" in body["model"]:
        body["model"] = {**body["model"], "save_path": path_public(body["model"]["save_path"])}
    body["status"] = experiment.status
    body["progress"] = round(experiment.progress, 4)
    if experiment.error:
        body["error"] = text_paths_hidden(experiment.error)
    return body

