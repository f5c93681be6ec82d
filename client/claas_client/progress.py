"""A tqdm bar that follows an experiment's stored progress events (epoch by epoch)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from tqdm.auto import tqdm

TERMINAL = ("completed", "failed", "cancelled")


class ProgressBar:
    """Epochs done out of experiences x epochs; `update` takes the events the server stored."""

    def __init__(self, exp_name: str, *, total: int, enabled: bool = True,
                 options: Optional[Mapping[str, Any]] = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.bar: Optional[tqdm] = None
        if enabled:
            kwargs: dict[str, Any] = {"desc": exp_name, "unit": "epoch", "total": self.total}
            kwargs.update(options or {})
            self.bar = tqdm(**kwargs)

    def event(self, event: Mapping[str, Any]) -> None:
        """Move the bar to where an `epoch_end` or `experience_end` event says the run is."""
        kind = event.get("type")
        if kind not in ("epoch_end", "experience_end"):
            return
        epochs = int(event.get("epochs") or 0) or None
        units = int(event.get("n_experiences") or 0) or None
        if epochs and units and units * epochs != self.total:
            self._retotal(units * epochs)
        if kind == "epoch_end" and epochs:
            self._to(int(event.get("experience", 0)) * epochs + int(event.get("epoch", 0)))
        elif kind == "experience_end":
            per = self.total // max(1, units or 1)
            self._to((int(event.get("experience", 0)) + 1) * per)

    def status(self, status: str) -> None:
        """Show the run's status; a completed run fills the bar."""
        if status == "completed":
            self._to(self.total)
        if self.bar is not None:
            self.bar.set_postfix_str(status, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _retotal(self, total: int) -> None:
        self.total = max(1, total)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def _to(self, position: int) -> None:
        position = min(max(position, self.done), self.total)
        if self.bar is not None and position > self.done:
            self.bar.update(position - self.done)
        self.done = position
