"""Limits every dataset format shares."""
from __future__ import annotations

MAX_CLASSES = 10_000
