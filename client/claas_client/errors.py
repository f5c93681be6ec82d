"""The one exception every failed call raises: the server's sentence, its details and the HTTP status."""
from __future__ import annotations

from typing import Any, Optional


class ClaasError(Exception):
    """A request CLaaS refused or could not answer, or a run that ended without results.

    `status_code` is the HTTP status (None when no answer came, or for a run that failed or was
    cancelled), `message` the server's one-sentence `error`, `details` its `details` object.
    """

    def __init__(self, message: str, *, status_code: Optional[int] = None,
                 details: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        prefix = f"{self.status_code}: " if self.status_code is not None else ""
        return prefix + self.message

    def __repr__(self) -> str:
        return f"ClaasError({self.message!r}, status_code={self.status_code!r}, details={self.details!r})"
