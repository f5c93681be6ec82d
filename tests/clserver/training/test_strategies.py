"""Every registered strategy trains end to end on a small stream, through the real job runner."""
from __future__ import annotations

from unittest import mock

import pytest

from clserver.experiments import services
from clserver.experiments.job import ExperimentJob
from clserver.models import Experiment
from clserver.training.strategies import STRATEGIES

SMALL = {"benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 3},
         "model": {"architecture": "simple_mlp", "params": {"hidden_size": 32}},
         "training": {"epochs": 2, "train_mb_size": 32, "device": "cpu"}}
PARAMS = {"replay": {"mem_size": 50}, "gdumb": {"mem_size": 100}, "der": {"mem_size": 50},
          "er_ace": {"mem_size": 50}, "gem": {"patterns_per_exp": 16}, "agem": {"patterns_per_exp": 16}}


def run_job(user, name: str, options: dict) -> Experiment:
    experiment = services.experiment_setup(owner=user, raw={"exp_name": name, **options})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        services.experiment_execute(owner=user, name=name)
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    return experiment


def test_the_registry_lists_every_required_strategy():
    assert {"naive", "cumulative", "joint_training", "ensemble", "replay", "gdumb", "ewc", "si", "lwf", "mas",
            "gem", "agem", "der", "er_ace"} <= set(STRATEGIES.names())


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_runs_end_to_end(transactional_db, user, name):
    experiment = run_job(user, f"strategy-{name}", {**SMALL, "strategy": {"name": name, "params": PARAMS.get(name, {})}})
    assert experiment.status == "completed", experiment.error
    metrics = experiment.results["metrics"]
    rows = 1 if name == "joint_training" else 2
    assert len(metrics["accuracy_matrix"]) == rows
    assert 0.0 <= metrics["final_accuracy"] <= 1.0
    # Two epochs already beat chance (0.2 among the five classes) on what was trained last.
    assert experiment.results["experiences"][-1]["accuracy"] > 0.3
    assert experiment.results["model"]["save_path"].endswith("final_model.pt")
    kinds = set(experiment.events.values_list("type", flat=True))
    assert {"status", "epoch_end", "experience_end"} <= kinds


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "experience_balanced"])
def test_replay_buffer_policies(transactional_db, user, policy):
    experiment = run_job(user, f"policy-{policy}", {**SMALL, "strategy": {
        "name": "replay", "params": {"mem_size": 60, "policy": policy}}})
    assert experiment.status == "completed", experiment.error
    # Replay mixes memory into the second experience: more samples than the new data alone.
    second = experiment.results["experiences"][1]
    assert second["samples_processed"] > second["train_samples"] * SMALL["training"]["epochs"]


def test_ensemble_keeps_one_expert_per_experience(transactional_db, user):
    import torch

    experiment = run_job(user, "ensemble-experts", {**SMALL, "strategy": {"name": "ensemble"}})
    from django.conf import settings

    state = torch.load(settings.DATA_DIR / experiment.results["model"]["save_path"], weights_only=True)
    experts = {key.split(".")[1] for key in state if key.startswith("experts.")}
    assert experts == {"0", "1"}
    # The most-confident expert keeps both halves of the classes alive, unlike naive fine-tuning.
    assert min(experiment.results["metrics"]["accuracy_matrix"][-1]) > 0.3


def test_a_diverging_run_fails_with_the_reason(transactional_db, user):
    # MAS at Avalanche's own default strength blows up under SGD at lr 0.1 in the second experience.
    experiment = run_job(user, "diverges", {**SMALL, "strategy": {"name": "mas", "params": {"lambda_reg": 1.0}}})
    assert experiment.status == "failed"
    assert experiment.error.startswith("Training diverged in experience 1")
    assert "lower the learning rate" in experiment.error


def test_deterministic_training_turns_on_deterministic_kernels_for_the_run_only():
    """`training.deterministic` holds torch to deterministic kernels while the job runs; the worker's
    next job gets torch as it was (the flags are process-wide)."""
    import torch

    from clserver.training.runner import kernels_deterministic

    assert not torch.are_deterministic_algorithms_enabled()
    with kernels_deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    with kernels_deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()
