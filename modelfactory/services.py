"""Writes of the model factory: register models, add versions, mirror them into MLflow, delete."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.db.models.deletion import ProtectedError

from claas_site.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from claas_site.lazy import lazy_import
from claas_site.quotas import quota_count_check, quota_stored_bytes_check
from modelfactory.architectures import (
    ARCHITECTURES,
    PROGRAM,
    architecture_build,
    architecture_params,
    architecture_smoke_test,
)
from modelfactory.costs import cost_check
from modelfactory.models import ModelVersion, RegisteredModel
from modelfactory.selectors import (
    mlflow_name,
    model_version_files,
    model_version_path,
    model_version_users,
    registered_model_get,
)
from modelfactory.programs import is_program, program_read
from modelfactory.weights import (
    FORMAT_INIT,
    FORMAT_PROGRAM,
    output_check,
    state_dict_bytes,
    state_dict_normalised,
    weights_apply,
    weights_read,
)

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")

logger = logging.getLogger(__name__)

NAME_MAX_LENGTH = 100
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
SEED_MAX = 2**31 - 1
MODELS_SUBDIR = Path("files") / "models"


@dataclass
class Registered:
    """A stored version and, when mirroring into MLflow failed, why (the version is kept regardless)."""

    version: ModelVersion
    mlflow_error: str | None = None


@dataclass
class _Prepared:
    model: nn.Module
    source_format: str


# --- validation ------------------------------------------------------------------------------
def model_name_validate(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput("name is required and must be a string.", details={"name": "required"})
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidInput(f"name may have at most {NAME_MAX_LENGTH} characters.", details={"name": len(name)})
    if not NAME_RE.match(name):
        raise InvalidInput("name may contain only letters, digits, '_', '.' and '-'.", details={"name": name})
    return name


def model_params_validate(*, architecture: Any, params: Any) -> dict[str, Any]:
    """Parameters with defaults filled; messages name the request's own fields."""
    entry = ARCHITECTURES.get(architecture, "architecture")
    given = entry.validate(params, "params")
    return architecture_params(architecture=architecture, params=given, where="model")


def _upload_size_check(file: UploadedFile) -> None:
    limit = settings.MAX_UPLOAD_BYTES
    if file.size is not None and file.size > limit:
        raise PayloadTooLarge(f"The file is {file.size} bytes; the limit is {limit} bytes.",
                              details={"size_bytes": file.size, "limit_bytes": limit})


def _upload_source(file: UploadedFile) -> Any:
    # Large uploads already lie in a temporary file; small ones are in memory.
    if hasattr(file, "temporary_file_path"):
        return file.temporary_file_path()
    file.seek(0)
    return file


def _prepare(*, architecture: str, params: dict[str, Any], file: UploadedFile | None, seed: int) -> _Prepared:
    """Build the model with its weights and prove it runs: one forward pass on a dummy batch of one.

    Uploaded files are read as tensors only (weights_read): no program of the upload ever runs.
    """
    if file is None:
        # Fork the RNG so that seeding here leaves the process's global generator alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = architecture_build(architecture=architecture, params=params)
        source_format = FORMAT_INIT
    else:
        _upload_size_check(file)
        loaded = weights_read(source=_upload_source(file), max_unpacked_bytes=settings.MAX_UPLOAD_BYTES)
        model = architecture_build(architecture=architecture, params=params)
        weights_apply(model=model, state_dict=loaded.state_dict, architecture=architecture)
        source_format = loaded.source_format
    # architecture_params() bounded this model's activations and FLOPs; the real pass has a batch of one.
    output_check(output=architecture_smoke_test(model=model, params=params))
    return _Prepared(model, source_format)


def _prepare_program(*, owner: Any, file: UploadedFile) -> tuple[dict[str, Any], _Prepared, Path]:
    """Check an uploaded torch.export program, store it once under its digest, build it and prove it runs.

    Nothing of the archive is unpickled, and its graph is checked operator by operator before anything
    builds it (modelfactory/programs.py); its cost is counted on the meta device before a real pass.
    Returns the architecture params, the prepared model and the stored file (new or shared).
    """
    from modelfactory.program_module import program_cost, program_path

    _upload_size_check(file)
    source = _upload_source(file)
    archive = program_read(source=source, max_unpacked_bytes=settings.MAX_UPLOAD_BYTES)
    cost_check(cost=program_cost(archive=archive), where="The program's layers")
    digest = hashlib.sha256()
    file.seek(0)
    for chunk in file.chunks():
        digest.update(chunk)
    sha256 = digest.hexdigest()
    path = program_path(sha256)
    if not path.is_file():
        quota_stored_bytes_check(owner=owner, adding=file.size or 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as out:
            file.seek(0)
            for chunk in file.chunks():
                out.write(chunk)
        os.replace(tmp, path)
    params = {"program": sha256, "input_shape": archive.input_shape, "num_classes": archive.num_classes}
    model = architecture_build(architecture=PROGRAM, params=params)
    output_check(output=architecture_smoke_test(model=model, params=params))
    return params, _Prepared(model, FORMAT_PROGRAM), path


def _program_forget(*, sha256: str) -> None:
    """Remove a stored program once no registered model uses it."""
    from modelfactory.program_module import program_path

    if not RegisteredModel.objects.filter(architecture=PROGRAM, params__program=sha256).exists():
        _files_remove([program_path(sha256)])


# --- files -----------------------------------------------------------------------------------
def _weights_write(*, owner: Any, model: nn.Module) -> tuple[str, str, int]:
    """Write the normalised state_dict under a fresh name; returns (relative path, sha256, size)."""
    data = state_dict_bytes(state_dict=state_dict_normalised(model=model))
    # The MLflow mirror keeps two more copies (the state_dict and the logged model) where it is counted.
    from claas_site.tracking import user_artifact_dir

    copies = 3 if user_artifact_dir(username=owner.username) else 1
    quota_stored_bytes_check(owner=owner, adding=copies * len(data))
    relative = MODELS_SUBDIR / str(owner.pk) / f"{uuid.uuid4().hex}.pt"
    path = settings.DATA_DIR / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return str(relative), hashlib.sha256(data).hexdigest(), len(data)


def _files_remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


# --- downloads -------------------------------------------------------------------------------
def model_version_export(*, version: ModelVersion, format: str) -> tuple[Path, str]:
    """The file to send for a download in `format`, and its file name (exports are made once, then reused)."""
    from modelfactory.exports import DOWNLOAD_FORMATS, export_file

    registered = version.model
    path = export_file(weights=model_version_path(version=version), architecture=registered.architecture,
                       params=registered.params, format=format, owner=registered.owner,
                       what=f"'{registered.name}' version {version.version}")
    return path, f"{registered.name}-v{version.version}{DOWNLOAD_FORMATS[format]}"


# --- MLflow ----------------------------------------------------------------------------------
def _mirror(*, version: ModelVersion, model: nn.Module) -> str | None:
    """Register the version in MLflow; on failure the version stays and the reason is returned."""
    from modelfactory.mirror import model_version_mirror

    registered = version.model
    tags = {
        "claas.architecture": registered.architecture,
        "claas.params": json.dumps(registered.params, sort_keys=True),
        "claas.source_format": version.source_format,
        "claas.sha256": version.sha256,
    }
    # Two rows: torch.export keeps a batch of one fixed, and logged models take any batch size.
    example = torch.zeros(2, *registered.params["input_shape"]).numpy()
    try:
        mirrored = model_version_mirror(
            username=registered.owner.username, name=registered.name, version=version.version, model=model,
            input_example=example, state_dict_path=str(model_version_path(version=version)), tags=tags,
            description=registered.description,
        )
    except Exception as exc:
        logger.warning("MLflow mirroring of %s failed", version, exc_info=True)
        return f"The version is stored but could not be registered in MLflow ({type(exc).__name__})."
    version.mlflow_version = mirrored["version"]
    version.save(update_fields=["mlflow_version"])
    return None


def _mlflow_forget(*, username: str, model: str, name: str, versions: list[str]) -> None:
    """Delete the model's MLflow runs and their files (they count in the user's quota), then its versions."""
    from claas_site import tracking

    try:
        tracking.runs_delete(username=username, tag="claas.model", value=model)
        tracking.registry_versions_delete(name=name, versions=versions)
    except Exception:
        logger.warning("Could not delete MLflow versions %s of %s", versions, name, exc_info=True)


# --- services --------------------------------------------------------------------------------
def registered_model_create(*, owner: Any, name: str, architecture: Any, params: Any, description: str = "",
                            file: UploadedFile | None = None, seed: int = 0) -> Registered:
    """Register a model; version 1 holds the uploaded weights or a seeded fresh initialisation."""
    name = model_name_validate(name)
    program = file is not None and is_program(_upload_source(file))
    if program and (architecture or params):
        raise InvalidInput("A torch.export program carries its own architecture; leave architecture and params out.",
                           details={"architecture": str(architecture or "")[:50]})
    if not program and not architecture:
        raise InvalidInput("architecture is required (a name from /api/architectures/) unless file is a "
                           "torch.export program (.pt2).", details={"architecture": "required"})
    full_params = None if program else model_params_validate(architecture=architecture, params=params)
    if RegisteredModel.objects.filter(owner=owner, name=name).exists():
        raise Conflict(f"You already have a registered model named '{name}'.", details={"name": name})
    quota_count_check(owner=owner, kind="models")
    if program:
        full_params, prepared, _ = _prepare_program(owner=owner, file=file)
        architecture = PROGRAM
    else:
        prepared = _prepare(architecture=architecture, params=full_params, file=file, seed=seed)
    relative, sha256, size = _weights_write(owner=owner, model=prepared.model)
    try:
        with transaction.atomic():
            quota_count_check(owner=owner, kind="models")  # with the user's row locked
            registered = RegisteredModel.objects.create(owner=owner, name=name, architecture=architecture,
                                                        params=full_params, description=description)
            version = ModelVersion.objects.create(
                model=registered, version=1, weights_file=relative, source_format=prepared.source_format,
                sha256=sha256, size_bytes=size, note="" if file is not None else f"initialised with seed {seed}",
            )
    except IntegrityError:
        _files_remove([settings.DATA_DIR / relative])
        if architecture == PROGRAM:
            _program_forget(sha256=full_params["program"])
        raise Conflict(f"You already have a registered model named '{name}'.", details={"name": name})
    except BaseException:
        _files_remove([settings.DATA_DIR / relative])
        if architecture == PROGRAM:
            _program_forget(sha256=full_params["program"])
        raise
    return Registered(version, _mirror(version=version, model=prepared.model))


def model_version_create(*, owner: Any, name: str, file: UploadedFile, note: str = "") -> Registered:
    """Add a version with uploaded weights (state_dict or TorchScript) to one of the owner's models."""
    registered = registered_model_get(owner=owner, name=name)
    prepared = _prepare(architecture=registered.architecture, params=registered.params, file=file, seed=0)
    relative, sha256, size = _weights_write(owner=owner, model=prepared.model)
    try:
        with transaction.atomic():
            # Lock the model row so that concurrent uploads get consecutive numbers.
            locked = RegisteredModel.objects.select_for_update().get(pk=registered.pk)
            latest = locked.versions.aggregate(latest=Max("version"))["latest"] or 0
            version = ModelVersion.objects.create(
                model=locked, version=latest + 1, weights_file=relative, source_format=prepared.source_format,
                sha256=sha256, size_bytes=size, note=note,
            )
    except RegisteredModel.DoesNotExist:
        _files_remove([settings.DATA_DIR / relative])
        raise Conflict(f"Registered model '{name}' was deleted during the upload.")
    except IntegrityError:
        _files_remove([settings.DATA_DIR / relative])
        raise Conflict(f"Another version of '{name}' was uploaded at the same time; try again.")
    except BaseException:
        _files_remove([settings.DATA_DIR / relative])
        raise
    return Registered(version, _mirror(version=version, model=prepared.model))


def registered_model_delete(*, owner: Any, name: str) -> None:
    """Delete a model with all its versions, unless an experiment or a deployment uses one."""
    with transaction.atomic():
        registered = registered_model_get(owner=owner, name=name)
        versions = list(registered.versions.all())
        for version in versions:
            users = model_version_users(version=version)
            if users:
                raise Conflict(f"Registered model '{name}' version {version.version} is used by {users[0]}; "
                               "delete that first.", details={"used_by": users})
        paths = [path for v in versions for path in model_version_files(version=v)]  # weights and exports
        mirrored = [v.mlflow_version for v in versions if v.mlflow_version]
        registry_name = mlflow_name(model=registered)
        try:
            registered.delete()
        except ProtectedError:
            raise Conflict(f"Registered model '{name}' came into use while it was being deleted.")
        transaction.on_commit(lambda: _files_remove(paths))
        if registered.architecture == PROGRAM:
            sha256 = registered.params["program"]
            transaction.on_commit(lambda: _program_forget(sha256=sha256))
        username, model = registered.owner.username, registered.name
        transaction.on_commit(lambda: _mlflow_forget(username=username, model=model, name=registry_name,
                                                     versions=mirrored))
