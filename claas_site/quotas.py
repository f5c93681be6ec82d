"""Per-user quotas: experiments queued or running at once, bytes stored, and how many of each resource."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings

from claas_site.errors import QuotaExceeded

GIB = 1024**3


def _size_text(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def user_dirs(*, owner: Any) -> list[Path]:
    """Every folder that holds files on the user's behalf: named after the user's id, and the user's
    MLflow artifacts (copies of models and deployment versions) when the MLflow store is local."""
    from claas_site.tracking import user_artifact_dir

    uid = str(owner.pk)
    dirs = [
        settings.DATA_DIR / "files" / "datasets" / uid,
        settings.DATA_DIR / "files" / "models" / uid,
        settings.CHECKPOINT_DIR / uid,
        settings.DEPLOYMENT_DIR / uid,
    ]
    mlflow = user_artifact_dir(username=owner.username)
    return dirs + ([mlflow] if mlflow is not None else [])


def _tree_bytes(root: Path) -> int:
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # removed while we walked: it no longer counts
                continue
    return total


def stored_bytes(*, owner: Any) -> int:
    """What the user's datasets, model weights, checkpoints, deployments and MLflow artifacts take on disk."""
    return sum(_tree_bytes(path) for path in user_dirs(owner=owner))


def quota_stored_bytes_check(*, owner: Any, adding: int = 0) -> None:
    """Refuse (429) storing `adding` more bytes when that would pass the user's quota."""
    limit = settings.QUOTA_STORED_BYTES
    if not limit:
        return
    used = stored_bytes(owner=owner)
    if used + adding > limit:
        what = (f"Storing {_size_text(adding)} more would take your files to {_size_text(used + adding)}"
                if adding else f"Your files take {_size_text(used)}")
        raise QuotaExceeded(
            f"{what}, over your quota of {_size_text(limit)}; delete datasets, models, experiments or "
            "deployments you no longer need.",
            details={"stored_bytes": used, "adding_bytes": adding, "quota_bytes": limit})


def quota_concurrent_experiments_check(*, owner: Any, starting: Any = None) -> None:
    """Refuse (429) queuing one more experiment when the user has the most allowed queued or running.

    Call it inside the transaction that queues the experiment: the user's row is locked so that
    two requests at once cannot both take the last place (PostgreSQL; SQLite writes one at a time).
    """
    from django.contrib.auth import get_user_model

    from clserver.models import ACTIVE_STATUSES, Experiment

    limit = settings.QUOTA_CONCURRENT_EXPERIMENTS
    if not limit:
        return
    list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk", flat=True))
    active = Experiment.objects.filter(owner=owner, status__in=ACTIVE_STATUSES)
    if starting is not None:
        active = active.exclude(pk=starting.pk)
    count = active.count()
    if count >= limit:
        raise QuotaExceeded(
            f"You have {count} experiments queued or running, the most allowed at once; wait for one to "
            "finish or cancel one.", details={"active_experiments": count, "quota": limit})


# Resources whose number per user is limited: setting, model, what the sentence calls them (plural).
COUNTED = {
    "datasets": ("QUOTA_DATASETS", "clserver.Dataset", "datasets"),
    "models": ("QUOTA_MODELS", "modelfactory.RegisteredModel", "registered models"),
    "experiments": ("QUOTA_EXPERIMENTS", "clserver.Experiment", "experiments"),
    "deployments": ("QUOTA_DEPLOYMENTS", "clserver.Deployment", "deployments"),
}


def quota_count_check(*, owner: Any, kind: str) -> None:
    """Refuse (429) creating one more of `kind` (a key of COUNTED) when the user has the most allowed.

    Called inside the transaction that creates the row, it locks the user's row first, so that two
    requests at once cannot both take the last place (PostgreSQL; SQLite writes one at a time);
    called outside one, it is an early answer before costly work, and the locked call decides.
    """
    from django.apps import apps
    from django.contrib.auth import get_user_model
    from django.db import transaction

    setting, model, noun = COUNTED[kind]
    limit = getattr(settings, setting)
    if not limit:
        return
    if transaction.get_connection().in_atomic_block:
        list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk", flat=True))
    count = apps.get_model(model).objects.filter(owner=owner).count()
    if count >= limit:
        raise QuotaExceeded(f"You have {count} {noun if count != 1 else noun[:-1]}, the most allowed; delete one "
                            "you no longer need first.", details={kind: count, "quota": limit})
