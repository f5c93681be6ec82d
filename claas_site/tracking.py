"""The one boundary to MLflow: runs, metrics, logged models, the model registry and aliases."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

logger = logging.getLogger(__name__)

# Fluent MLflow calls use process-global state; one lock keeps worker threads apart.
_FLUENT_LOCK = threading.RLock()
# Logged models are torch.export programs: loading one needs torch (and mlflow), not CLaaS.
REQUIRED_PACKAGES = ("torch",)
MAX_PARAM_LENGTH = 500
LOGGED_MODEL_RE = re.compile(r"models:/(m-[0-9a-f]+)")


@lru_cache(maxsize=1)
def _mlflow() -> Any:
    import mlflow

    mlflow.set_tracking_uri(settings.MLFLOW_TRACKING_URI)
    mlflow.set_registry_uri(settings.MLFLOW_TRACKING_URI)
    return mlflow


def client() -> Any:
    _mlflow()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.MLFLOW_TRACKING_URI, registry_uri=settings.MLFLOW_TRACKING_URI)


PING_TIMEOUT_S = 3.0


def ping() -> None:
    """Raise if the tracking store cannot be reached.

    Cheap on purpose (the health check calls it): a SQLite store is opened read-only and its
    schema version read, a server is asked for /health; MLflow itself is not imported.
    """
    uri = settings.MLFLOW_TRACKING_URI
    if uri.startswith("sqlite:///"):
        import sqlite3

        path = uri[len("sqlite:///"):]
        if not os.path.exists(path):
            store_init()  # a fresh data dir: MLflow creates the store on first use
            return
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=PING_TIMEOUT_S)
        try:
            if conn.execute("SELECT version_num FROM alembic_version").fetchone() is None:
                raise RuntimeError("the MLflow store has no schema version")
        finally:
            conn.close()
    elif uri.startswith(("http://", "https://")):
        import requests

        requests.get(uri.rstrip("/") + "/health", timeout=PING_TIMEOUT_S).raise_for_status()
    else:
        client().search_experiments(max_results=1)


def store_init() -> None:
    """Create the MLflow store's tables (MLflow does it on first use; setup does it up front)."""
    client().search_experiments(max_results=1)


def user_experiment_id(*, username: str) -> str:
    name = f"claas/{username}"
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    if settings.MLFLOW_TRACKING_URI.startswith("sqlite:"):
        artifact_location = f"{settings.MLFLOW_ARTIFACT_ROOT}/{username}"
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another worker created it between our lookup and the create.
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten(options: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in options.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = str(value)[:MAX_PARAM_LENGTH]
    return out


def run_start(*, username: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> tuple[str, str]:
    """Create a run with its flattened params; returns (experiment_id, run_id)."""
    from mlflow.entities import Param

    exp_id = user_experiment_id(username=username)
    c = client()
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    flat = [Param(k, v) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        c.log_batch(run.info.run_id, params=flat[i:i + 100])
    return exp_id, run.info.run_id


def run_metrics(*, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def run_metric_history(*, run_id: str, key: str, values: list[tuple[int, float]]) -> None:
    """Several steps of one metric in one call (MLflow takes at most 1000 metrics per batch)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, int(step)) for step, v in values]
    for start in range(0, len(metrics), 1000):
        client().log_batch(run_id, metrics=metrics[start:start + 1000])


# A job's final status -> the MLflow run status that mirrors it.
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
MAX_TAG_LENGTH = 5000


def run_end(*, run_id: str, status: str, error: str = "") -> None:
    """End a run as FINISHED, FAILED or KILLED (a job status is mapped); a failure's sentence is a tag."""
    c = client()
    if error:
        c.set_tag(run_id, "claas.error", error[:MAX_TAG_LENGTH])
    c.set_terminated(run_id, status=RUN_STATUS.get(status, status))


def run_table(*, run_id: str, data: dict[str, list[Any]], artifact_file: str) -> None:
    """A table artifact (columns of equal length), shown as a table in the MLflow UI."""
    client().log_table(run_id, data=data, artifact_file=artifact_file)


def run_tags(*, run_id: str, tags: dict[str, str]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_tag(run_id, key, value)


def run_figure(*, run_id: str, figure: Any, artifact_file: str) -> None:
    client().log_figure(run_id, figure, artifact_file)


def run_input(*, run_id: str, x: Any, y: Any, name: str, context: str, tags: dict[str, str]) -> str:
    """Record the data a run trained or was evaluated on (`mlflow.log_input`, with its digest); the source
    names the benchmark through `tags`, never a path of the server. Returns the digest."""
    mlflow = _mlflow()
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource

    dataset = mlflow.data.from_numpy(x, targets=y, source=CodeDatasetSource(tags=tags), name=name)
    with _FLUENT_LOCK:
        with mlflow.start_run(run_id=run_id, nested=False):
            mlflow.log_input(dataset, context=context)
    return dataset.digest


def run_url(*, experiment_id: str, run_id: str) -> str:
    return f"{settings.MLFLOW_UI_URL}/#/experiments/{experiment_id}/runs/{run_id}"


def model_log(*, run_id: str, model: Any, input_example: Any, name: str,
              registered_name: str | None = None, tags: dict[str, str] | None = None) -> dict[str, str]:
    """Log a PyTorch model as an artifact of the run; optionally register it.

    Returns {"model_uri", "registered_name", "version"} (the last two empty when not registered).
    """
    mlflow = _mlflow()
    import mlflow.pytorch

    # Logged in evaluation mode as a torch.export program (pt2): `mlflow.pytorch.load_model` and
    # `mlflow.pyfunc.load_model` load it in any Python with torch, without CLaaS's classes on the path.
    training = model.training
    model.eval()
    try:
        with _FLUENT_LOCK:
            with mlflow.start_run(run_id=run_id, nested=False):
                info = mlflow.pytorch.log_model(
                    model, name=name, input_example=input_example, pip_requirements=pip_requirements(),
                    serialization_format="pt2",
                )
    finally:
        model.train(training)
    out = {"model_uri": info.model_uri, "registered_name": "", "version": ""}
    if registered_name:
        version = registry_add(name=registered_name, source=info.model_uri, run_id=run_id, tags=tags or {})
        out.update(registered_name=registered_name, version=version)
    return out


def pip_requirements() -> list[str]:
    """The installed versions of what a logged model needs to load, e.g. ["torch==2.14.1"]."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIRED_PACKAGES]


def registry_add(*, name: str, source: str, run_id: str | None = None, tags: dict[str, str] | None = None,
                 description: str | None = None) -> str:
    """Add a version to a registered model (creating the model first); returns the version."""
    c = client()
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    # A logged model's URI (models:/m-<id>) names the model itself; a tracking server accepts it as
    # a version's source only with that id given (a local store does not check).
    found = LOGGED_MODEL_RE.fullmatch(source)
    mv = c.create_model_version(name, source, run_id=run_id, tags=tags or {}, description=description,
                                model_id=found.group(1) if found else None)
    return str(mv.version)


def registry_alias(*, name: str, alias: str, version: str | int) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def registry_versions(*, name: str) -> list[dict[str, Any]]:
    c = client()
    # search_model_versions leaves aliases out; the registered model lists them (alias -> version).
    versions = c.search_model_versions(f"name='{name}'")
    aliases: dict[str, list[str]] = {}
    if versions:
        for alias, version in (c.get_registered_model(name).aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
    return [{"version": v.version, "tags": dict(v.tags), "aliases": sorted(aliases.get(str(v.version), []))}
            for v in versions]


def registry_delete(*, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client().delete_registered_model(name)
    except MlflowException:
        logger.info("MLflow registered model %s was not there to delete", name)


def registry_versions_delete(*, name: str, versions: list[str]) -> None:
    """Delete the given versions; the registered model goes too once it has none left.

    Other writers (an experiment with the same name) may share the registered model, so only
    the versions this caller created are removed.
    """
    from mlflow.exceptions import MlflowException

    c = client()
    for version in versions:
        try:
            c.delete_model_version(name, str(version))
        except MlflowException:
            logger.info("MLflow model version %s/%s was not there to delete", name, version)
    try:
        if not c.search_model_versions(f"name='{name}'"):
            c.delete_registered_model(name)
    except MlflowException:
        logger.info("MLflow registered model %s was not there to delete", name)


# --- what a user's MLflow data takes on disk, and deleting it ------------------------------------
def user_artifact_dir(*, username: str) -> Path | None:
    """The folder of the user's MLflow artifacts (runs and logged models) when the store is local.

    `user_experiment_id` puts them in `<MLFLOW_ARTIFACT_ROOT>/<username>` with a SQLite store;
    with an MLflow server the server picks the place, and None says they cannot be counted here.
    MLflow is not imported: the quota check calls this on uploads and ingests.
    """
    if not settings.MLFLOW_TRACKING_URI.startswith("sqlite:"):
        return None
    root = str(settings.MLFLOW_ARTIFACT_ROOT)
    if root.startswith("file://"):
        root = urlparse(root).path
    elif "://" in root:
        return None
    base = Path(root).resolve()
    path = (base / username).resolve()
    # A username such as ".." would name a folder that is not the user's own.
    return path if path.parent == base else None


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _paged(search: Any, **kwargs: Any) -> list[Any]:
    out, token = [], None
    while True:
        page = search(**kwargs, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _artifacts_delete(uri: str, *, own_dir: Path | None) -> None:
    """Remove the files under an artifact URI (a run's or a logged model's).

    A local path is removed only inside the user's own artifact folder: a path that an MLflow
    server reports names a folder on the server's machine, left to its `mlflow gc`. Other URIs
    (mlflow-artifacts:, s3:, ...) go through MLflow's artifact repository.
    """
    local = urlparse(uri).path if uri.startswith("file://") else (uri if ":" not in uri else None)
    if local is None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(uri).delete_artifacts()
        except Exception:
            logger.warning("Could not delete the MLflow artifacts at %s", uri, exc_info=True)
        return
    path = Path(local).resolve()
    if own_dir is None or not path.is_relative_to(own_dir):
        logger.info("MLflow artifacts at %s are not in this server's store; left to mlflow gc", uri)
        return
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):  # `<run id>/artifacts`: the run's folder goes too once empty
        os.rmdir(path.parent)


def runs_delete(*, username: str, tag: str, value: str) -> list[str]:
    """Delete the user's runs tagged `tag` = `value`, with their artifacts and logged models.

    MLflow's own delete_run only marks a run deleted and keeps its files (until `mlflow gc`);
    here the files go at once, so the bytes they took are free again. Registered model versions
    made from these runs are deleted too, and a registered model left with no version.
    Returns the ids of the runs deleted.
    """
    from mlflow.entities import ViewType

    c = client()
    experiment = c.get_experiment_by_name(f"claas/{username}")
    if experiment is None:
        return []
    exp_id, own_dir = experiment.experiment_id, user_artifact_dir(username=username)
    runs = _paged(c.search_runs, experiment_ids=[exp_id], run_view_type=ViewType.ALL, max_results=1000,
                  filter_string=f"tags.`{tag}` = '{_quoted(value)}'")
    touched: set[str] = set()
    for run in runs:
        run_id = run.info.run_id
        for mv in _paged(c.search_model_versions, filter_string=f"run_id = '{run_id}'"):
            c.delete_model_version(mv.name, mv.version)
            touched.add(mv.name)
        for logged in _paged(c.search_logged_models, experiment_ids=[exp_id],
                             filter_string=f"source_run_id = '{run_id}'"):
            _artifacts_delete(logged.artifact_location, own_dir=own_dir)
            c.delete_logged_model(logged.model_id)
        _artifacts_delete(run.info.artifact_uri, own_dir=own_dir)
        if run.info.lifecycle_stage != "deleted":
            c.delete_run(run_id)
    for name in touched:
        registry_forget_if_empty(name=name)
    return [run.info.run_id for run in runs]


def registry_forget_if_empty(*, name: str) -> None:
    """Delete a registered model that has no version left (others may still share one that has)."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        if not c.search_model_versions(f"name='{_quoted(name)}'"):
            c.delete_registered_model(name)
    except MlflowException:
        logger.info("MLflow registered model %s was not there to delete", name)


def runs_forget(*, username: str, tag: str, value: str, registered: str | None = None) -> None:
    """`runs_delete`, and the whole registered model `registered`, after the owner's row is gone:
    a failure is logged (MLflow unreachable), not raised, since the deletion has committed."""
    try:
        runs_delete(username=username, tag=tag, value=value)
        if registered:
            registry_delete(name=registered)
    except Exception:
        logger.warning("Could not delete the MLflow runs of %s %s of %s", tag, value, username, exc_info=True)
