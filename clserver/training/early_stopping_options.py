"""The `training.early_stopping` option: its declaration and checks (no torch, no Avalanche: the web process
validates options with it; the plugin lives in clserver/training/early_stopping.py)."""
from __future__ import annotations

from typing import Any

from claas_site.errors import InvalidInput
from claas_site.params import Param

METRICS = ("accuracy", "loss")
MAX_EPOCHS = "max epochs"
EARLY_STOPPING_PARAMS = (
    Param("enabled", "bool", True, "Stop early (false trains every epoch)."),
    Param("patience", "int", 2, "Epochs without an improvement after which training stops.", min=1, max=1000),
    Param("min_epochs", "int", 1, "Epochs trained before training may stop.", min=1, max=1000),
    Param("metric", "str", "accuracy", "What must improve on the held-out data.", choices=METRICS),
    Param("min_delta", "float", 0.0, "The smallest change that counts as an improvement (accuracy: a fraction, "
          "0.01 is one point).", min=0.0, max=1000.0),
    Param("validation_fraction", "float", 0.1, "Experiments: the fraction of each experience's training data "
          "held out (by the seed; not trained on); an experience stops on the held-out data of every experience "
          "so far. A deployment update stops on its validation data.", min=0.05, max=0.5),
    Param("lr_drops", "int", 0, "Learning-rate cuts before training stops: at a plateau the best weights come back, "
          "the learning rate is multiplied by lr_drop_factor and patience starts again, this many times; 0 stops "
          "at the first plateau.", min=0, max=10),
    Param("lr_drop_factor", "float", 0.1, "What each of the lr_drops multiplies the learning rate by.",
          min=0.001, max=0.99),
)
EARLY_STOPPING = Param(
    "early_stopping", "object", None, "Stop an experience's (or update's) training when its held-out accuracy or "
    "loss stops improving, e.g. {\"patience\": 2}; null (the default) trains every epoch.", nullable=True,
    fields=EARLY_STOPPING_PARAMS)


def early_stopping_check(*, early_stopping: dict[str, Any] | None, epochs: int, where: str) -> None:
    """The checks that involve the other training options (one sentence each)."""
    if early_stopping and early_stopping["min_epochs"] > epochs:
        raise InvalidInput(f"{where}.early_stopping.min_epochs is {early_stopping['min_epochs']} but "
                           f"{where}.epochs is {epochs}; it may be at most the epochs.",
                           details={f"{where}.early_stopping.min_epochs": early_stopping["min_epochs"]})


def early_stopping_on(training: dict[str, Any]) -> dict[str, Any] | None:
    """The early stopping options of `training` when it stops early (options stored before it existed: off)."""
    options = training.get("early_stopping")
    return options if options and options.get("enabled", True) else None
