"""Job kinds: each kind of background job row, registered by the app that owns it in AppConfig.ready()."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from django.db import models

if TYPE_CHECKING:
    from clserver.jobs.runner import JobRunner


@dataclass(frozen=True)
class JobKind:
    """A kind of train job: its rows, the lookup from a row to its owner, its runner (imported on use,
    so the web process never loads what training needs) and what the reaper does when it gives up."""

    model: type[models.Model]
    owner_field: str
    runner: Callable[[], type[JobRunner]]
    on_failed: Callable[[Any, str], None] | None = None

    @property
    def name(self) -> str:
        return self.model.__name__


JOB_KINDS: dict[str, JobKind] = {}


def job_kind_register(*, kind: JobKind) -> None:
    """Add a kind (once; a second registration of the same model replaces the first)."""
    JOB_KINDS[kind.name] = kind


def job_kinds() -> list[JobKind]:
    return list(JOB_KINDS.values())


def job_kind_get(*, name: str) -> JobKind:
    return JOB_KINDS[name]
