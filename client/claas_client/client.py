"""The client: one object per server and user, with every method of the API."""
from __future__ import annotations

from typing import Any, Optional

import requests

from claas_client.datasets import DatasetsApi
from claas_client.deployments import DeploymentsApi
from claas_client.experiments import ExperimentsApi
from claas_client.models import ModelsApi
from claas_client.transport import DEFAULT_TIMEOUT_S, Transport


class Client(ModelsApi, DatasetsApi, ExperimentsApi, DeploymentsApi):
    """CLaaS at `url` as the user whose API token is `token` (`./claas run` prints the demo user's).

    Every refused request raises `ClaasError` with the server's sentence and details.
    """

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 session: Optional[requests.Session] = None) -> None:
        self._http = Transport(url, token, timeout=timeout, session=session)

    @property
    def url(self) -> str:
        return self._http.url

    def get(self, path: str, **kwargs: Any) -> Any:
        """Any other GET of the API (e.g. `/api/strategies/`), as parsed JSON."""
        return self._http.get(path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """Any other POST of the API, as parsed JSON."""
        return self._http.post(path, body, **kwargs)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"
