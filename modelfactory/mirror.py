"""The model factory's versions mirrored into the MLflow Model Registry (through claas_site.tracking)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from claas_site import tracking


def model_version_mirror(*, username: str, name: str, version: int, model: Any, input_example: Any,
                         state_dict_path: str, tags: dict[str, str], description: str = "") -> dict[str, str]:
    """Mirror one model-factory version into the registry as `<username>.<name>`.

    A dedicated run holds the logged PyTorch model (so `models:/` URIs load it) and the
    normalised state_dict file; `tags` go on the registered model and on the version.
    Returns {"registered_name", "version", "model_uri", "run_id"}.
    """
    registered = f"{username}.{name}"
    _, run_id = tracking.run_start(username=username, run_name=f"model {name} v{version}", params={},
                                   tags={**tags, "claas.user": username, "claas.model": name,
                                         "claas.model_version": str(version)})
    c = tracking.client()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # The stored file has a random name; the artifact gets a readable one.
            readable = Path(tmp) / f"{name}-v{version}.pt"
            shutil.copyfile(state_dict_path, readable)
            c.log_artifact(run_id, str(readable), artifact_path="state_dict")
        logged = tracking.model_log(run_id=run_id, model=model, input_example=input_example, name="model",
                                    registered_name=registered, tags={**tags, "claas.model_version": str(version)})
        for key, value in tags.items():
            c.set_registered_model_tag(registered, key, value)
        if description:
            c.update_registered_model(registered, description=description)
    except Exception:
        tracking.run_end(run_id=run_id, status="FAILED")
        raise
    tracking.run_end(run_id=run_id, status="FINISHED")
    return {"registered_name": registered, "version": logged["version"], "model_uri": logged["model_uri"],
            "run_id": run_id}
