"""Content negotiation for downloads: `?format=` names the file format there, not DRF's renderer."""
from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request


class FormatIsNotARenderer(DefaultContentNegotiation):
    """`?format=` names the download format here, not DRF's renderer; errors stay JSON."""

    def select_renderer(self, request: Request, renderers: list, format_suffix: str | None = None) -> tuple:
        return renderers[0], renderers[0].media_type
