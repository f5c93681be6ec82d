"""The experiment job: lifecycle from JobRunner, training from the runner (worker only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from clserver.experiments.events import experiment_event_record
from clserver.experiments.mirror import experiment_run_end
from clserver.jobs.runner import JobRunner
from clserver.models import Experiment
from clserver.experiments.services import experiment_dir


class ExperimentJob(JobRunner):
    model = Experiment

    @property
    def workdir(self) -> Path:
        return experiment_dir(self.row)

    @staticmethod
    def workdir_of(experiment: Experiment) -> Path:
        return experiment_dir(experiment)

    def run(self) -> None:
        from clserver.training.runner import ExperimentRun

        ExperimentRun(self).run()

    def on_status(self, status: str, error: str = "") -> None:
        payload: dict[str, Any] = {"status": status}
        if error:
            payload["error"] = error
        experiment_event_record(experiment=self.row, type="status", payload=payload)
        if status in ("failed", "cancelled"):
            experiment = Experiment.objects.filter(pk=self.job_id).first()
            if experiment is not None:
                experiment_run_end(experiment=experiment, status=status, error=error)


def experiment_failed_by_reaper(row: Any, reason: str) -> None:
    experiment = Experiment.objects.get(pk=row.pk)
    experiment_event_record(experiment=experiment, type="status", payload={"status": "failed", "error": reason})
    experiment_run_end(experiment=experiment, status="failed", error=reason)
