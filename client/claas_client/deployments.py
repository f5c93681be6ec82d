"""Deployments: deploy, predict, ingest labelled data, wait for updates, roll back, download versions."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from claas_client.errors import ClaasError
from claas_client.models import Format
from claas_client.results import Prediction
from claas_client.transport import Transport, quoted

UPDATE_FINISHED = ("promoted", "rejected", "failed", "cancelled")
POLL_S = 0.5


def rows(x: Any) -> list[list[float]]:
    """Inputs as JSON rows: one list of numbers per sample (images are flattened)."""
    array = np.asarray(x, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    return array.reshape(array.shape[0], -1).tolist()


class DeploymentsApi:
    """Methods on `/api/deployments/`."""

    _http: Transport

    def deploy(self, name: str, source: Union[str, dict[str, Any]], *, detector: Optional[dict[str, Any]] = None,
               update: Optional[dict[str, Any]] = None, **options: Any) -> dict[str, Any]:
        """Deploy an experiment's final model (`source="<exp_name>"`) or a registered version
        (`source={"registered": ..., "version": ..., "reference": "<dataset>"}`), with a drift `detector`
        and an `update` policy (server defaults when left out)."""
        body: dict[str, Any] = {"name": name,
                                "source": {"exp_name": source} if isinstance(source, str) else source}
        if detector is not None:
            body["detector"] = detector
        if update is not None:
            body["update"] = update
        body.update(options)
        return self._http.post("/api/deployments/", body)

    def deployment(self, name: str) -> dict[str, Any]:
        """Champion, versions, drift checks and updates."""
        return self._http.get(f"/api/deployments/{quoted(name)}")

    def deployments(self) -> list[dict[str, Any]]:
        return self._http.get("/api/deployments/")

    def delete_deployment(self, name: str) -> None:
        self._http.delete(f"/api/deployments/{quoted(name)}")

    def predict(self, name: str, x: Any) -> Prediction:
        """The champion's classes for the rows of `x` (at most 10,000), and the version that gave them."""
        body = self._http.post(f"/api/deployments/{quoted(name)}/predict", {"inputs": rows(x)})
        return Prediction(np.asarray(body["predictions"], dtype=np.int64), int(body["model_version"]))

    def ingest(self, name: str, x: Any, y: Any) -> dict[str, Any]:
        """Send labelled rows: checked for drift and buffered. The answer has `drift`, `update` (the update
        it started, or None), `buffered` and `trigger`."""
        labels = np.asarray(y).astype(np.int64).reshape(-1).tolist()
        return self._http.post(f"/api/deployments/{quoted(name)}/ingest", {"inputs": rows(x), "labels": labels})

    def update(self, name: str, **options: Any) -> dict[str, Any]:
        """Start an update now on the buffered data (optionally `strategy=` or `training=` for this one)."""
        return self._http.post(f"/api/deployments/{quoted(name)}/update", options)

    def update_status(self, name: str, update_id: int) -> dict[str, Any]:
        """One update of a deployment, by its number."""
        for update in self.deployment(name)["updates"]:
            if update["id"] == update_id:
                return update
        raise ClaasError(f"Deployment '{name}' has no update {update_id}.", status_code=404,
                         details={"update_id": update_id})

    def wait_update(self, name: str, update_id: int, timeout: Optional[float] = 600) -> dict[str, Any]:
        """Wait until an update is promoted, rejected, failed or cancelled, and return it (see its `status`
        and `reason`). Raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            update = self.update_status(name, update_id)
            if update["status"] in UPDATE_FINISHED:
                return update
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Update {update_id} of '{name}' is still {update['status']} after {timeout} s.")
            time.sleep(POLL_S)

    def cancel_update(self, name: str, update_id: int) -> dict[str, Any]:
        return self._http.post(f"/api/deployments/{quoted(name)}/updates/{quoted(update_id)}/cancel")

    def rollback(self, name: str, version: int) -> dict[str, Any]:
        """Serve an earlier version again; returns the deployment."""
        return self._http.post(f"/api/deployments/{quoted(name)}/rollback", {"version": int(version)})

    def deployment_events(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        """Stored drift-check and update events with an id above `after`."""
        return self._http.get(f"/api/deployments/{quoted(name)}/events", params={"after": after})

    def download(self, name: str, version: int, format: Format = "pt2",
                 path: Optional[Union[str, Path]] = None) -> Union[bytes, Path]:
        """A deployment's version as `state_dict`, `pt2` (`torch.export.load(path).module()`) or
        `torchscript`: bytes, or written to `path`. For registered models see `download_model`."""
        return self._http.download(f"/api/deployments/{quoted(name)}/versions/{quoted(version)}/download", path,
                                   params={"format": format})
