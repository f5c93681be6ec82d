"""What an experiment's MLflow run records: each experience as a step with its model, and at the end the
accuracy matrix (a table and a heat map), the data it trained on (`log_input`), the strategy and the cost.

`MlflowExperiencePlugin` is one of the loop's plugins (after the evaluation, before the checkpoint);
`run_summary_log` is called once the run completes. Both go through the runner's `Tracker`, so MLflow
being down is recorded in the results' `mlflow.errors` and never fails the training.
"""
from __future__ import annotations

import contextlib
import copy
import json
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from claas_site import tracking
from clserver.training.plugins import LivePlugin, Tracker
from clserver.training.streams import Stream

COST_FIGURES = ("train_time_s", "eval_time_s", "samples_processed", "wall_time_s")


def cpu_model(model: nn.Module) -> nn.Module:
    """The model as MLflow should store it: on the CPU, so that it loads on any machine (a copy when
    training ran on a GPU; the model itself otherwise)."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


@contextlib.contextmanager
def rng_preserved(model: nn.Module) -> Iterator[None]:
    """MLflow runs the model on the input example; keep that from shifting the training RNG."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        model.train(was_training)


class MlflowExperiencePlugin(LivePlugin):
    """After each `train` call and its evaluation: the experience's figures as one step of the run and the
    model as a logged model (`experience_<i>`); `on_logged(uri or None)` records where it went."""

    def __init__(self, *, tracker: Tracker, step: Callable[[], int], figures: Callable[[], dict[str, float]],
                 example: Callable[[], Any], on_logged: Callable[[str | None], None]) -> None:
        super().__init__()
        self.tracker = tracker
        self.step = step
        self.figures = figures
        self.example = example
        self.on_logged = on_logged

    def after_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        run_id = self.tracker.run_id
        if not run_id:
            self.on_logged(None)
            return
        i = self.step()
        self.tracker(tracking.run_metrics, run_id=run_id, metrics=self.figures(), step=i)
        with rng_preserved(strategy.model):
            logged = self.tracker(tracking.model_log, run_id=run_id, model=cpu_model(strategy.model),
                                  input_example=self.example(), name=f"experience_{i}")
        self.on_logged(logged["model_uri"] if logged else None)


def matrix_figure(matrix: list[list[float]]) -> Any:
    """The accuracy matrix as a heat map: row i is the model after experience i, column j experience j."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    values = np.asarray(matrix, dtype=float)
    figure = Figure(figsize=(1.2 + 0.5 * values.shape[1], 1.0 + 0.45 * values.shape[0]))
    axes = figure.subplots()
    image = axes.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    axes.set_xlabel("evaluated on experience")
    axes.set_ylabel("after training experience")
    if values.size <= 400:
        for (i, j), value in np.ndenumerate(values):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label="accuracy")
    figure.tight_layout()
    return figure


def run_summary_log(*, tracker: Tracker, options: dict[str, Any], stream: Stream, results: dict[str, Any]) -> None:
    """The completed run's accuracy matrix, data, strategy and cost (the final metrics are logged by the runner)."""
    run_id = tracker.run_id
    if not run_id:
        return
    matrix = results["metrics"]["accuracy_matrix"]
    table: dict[str, list[Any]] = {"after_experience": list(range(len(matrix)))}
    for j in range(len(matrix[0]) if matrix else 0):
        table[f"experience_{j}"] = [row[j] for row in matrix]
    tracker(tracking.run_table, run_id=run_id, data=table, artifact_file="accuracy_matrix.json")
    tracker(tracking.run_figure, run_id=run_id, figure=matrix_figure(matrix), artifact_file="accuracy_matrix.png")
    benchmark = options["benchmark"]
    name = str(benchmark.get("dataset") or benchmark["name"])
    for context, parts in (("train", stream.train), ("test", stream.test)):
        x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 1), np.float32)
        y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        tracker(tracking.run_input, run_id=run_id, x=x, y=y, name=name, context=context,
                tags={"claas.benchmark": json.dumps(benchmark, sort_keys=True)[:4000],
                      "claas.n_experiences": str(stream.n_experiences)})
    cost = {f"cost_{k}": float(v) for k, v in results.get("cost", {}).items()
            if k in COST_FIGURES and isinstance(v, (int, float))}
    tracker(tracking.run_metrics, run_id=run_id, metrics=cost, step=max(len(matrix) - 1, 0))
    strategy = options["strategy"]
    tracker(tracking.run_tags, run_id=run_id, tags={"claas.strategy": strategy["name"],
                                                    "claas.strategy_params": json.dumps(strategy.get("params", {}),
                                                                                        sort_keys=True)[:4000]})
