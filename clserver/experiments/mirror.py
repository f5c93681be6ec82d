"""An experiment's MLflow run mirrors how its job ended: FINISHED, FAILED (with the error) or KILLED."""
from __future__ import annotations

import logging

from clserver.models import Experiment

logger = logging.getLogger(__name__)


def experiment_run_end(*, experiment: Experiment, status: str, error: str = "") -> None:
    """End the MLflow run of a cancelled or failed experiment as KILLED, or FAILED with the error as a tag.

    A completed run is ended FINISHED by the runner after its last logs; MLflow being down never
    changes how the job ends.
    """
    if not experiment.mlflow_run_id or status not in ("failed", "cancelled"):
        return
    from claas_site import tracking

    try:
        tracking.run_end(run_id=experiment.mlflow_run_id, status=status, error=error)
    except Exception:
        logger.warning("could not end MLflow run %s as %s", experiment.mlflow_run_id, status, exc_info=True)
