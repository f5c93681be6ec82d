"""HTTP to one CLaaS server with one user's token; every error answer becomes a ClaasError."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import requests

from claas_client.errors import ClaasError

DEFAULT_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK_BYTES = 1 << 20


def error_from(response: requests.Response) -> ClaasError:
    """The server's `{"error", "details"}` as a ClaasError; any other body is quoted briefly."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        details = body.get("details")
        return ClaasError(body["error"], status_code=response.status_code,
                          details=details if isinstance(details, dict) else {})
    text = " ".join(response.text.split())[:200]
    reason = response.reason or "error"
    return ClaasError(f"HTTP {response.status_code} {reason} from {response.request.method} {response.url}"
                      + (f": {text}" if text else ""), status_code=response.status_code)


class Transport:
    """A requests.Session bound to `url`, sending `Authorization: Token <token>`."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                 session: Optional[requests.Session] = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; a non-2xx answer or a failed connection raises ClaasError."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            raise ClaasError(f"Could not reach CLaaS at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a successful answer (None for 204)."""
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ClaasError(f"CLaaS answered {method} {path} with a body that is not JSON.",
                             status_code=response.status_code) from exc

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.json("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None:
            kwargs["json"] = body
        return self.json("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.json("DELETE", path, **kwargs)

    def download(self, path: str, target: Optional[Union[str, Path]] = None,
                 params: Optional[dict[str, str]] = None) -> Union[bytes, Path]:
        """A file: its bytes, or written to `target` (streamed) and that path returned."""
        response = self.request("GET", path, params=params, stream=target is not None)
        if target is None:
            return response.content
        target = Path(target)
        partial = target.with_name(target.name + ".part")
        with response, open(partial, "wb") as out:
            for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                out.write(chunk)
        partial.replace(target)
        return target


def quoted(name: Union[str, int]) -> str:
    """A name or number as one path segment."""
    from urllib.parse import quote

    return quote(str(name), safe="")
