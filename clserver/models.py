"""The CL server's rows for Django, gathered from the packages that own them (imports run one way: from here down)."""
from __future__ import annotations

from clserver.datasets.models import Dataset
from clserver.deployments.models import (
    Deployment,
    DeploymentBatch,
    DeploymentEvent,
    DeploymentUpdate,
    DeploymentVersion,
    DriftCheck,
    UpdateDecision,
    UpdateTrigger,
    VersionOrigin,
)
from clserver.experiments.models import Experiment, ExperimentEvent
from clserver.jobs.models import ACTIVE_STATUSES, Job, JobStatus
from clserver.names import NAME_MAX_LENGTH, NAME_PATTERN

__all__ = ["ACTIVE_STATUSES", "Dataset", "Deployment", "DeploymentBatch", "DeploymentEvent", "DeploymentUpdate",
           "DeploymentVersion", "DriftCheck", "Experiment", "ExperimentEvent", "Job", "JobStatus",
           "NAME_MAX_LENGTH", "NAME_PATTERN", "UpdateDecision", "UpdateTrigger", "VersionOrigin"]
