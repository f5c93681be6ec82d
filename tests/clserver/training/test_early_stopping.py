"""Early stopping (`training.early_stopping`): checked at setup, stops an experience once its held-out
accuracy stops improving, says so in the results, leaves runs without it as they were, and survives a crash."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from clserver.experiments import services
from clserver.experiments.job import ExperimentJob
from clserver.models import Experiment, JobStatus
from clserver.training import runner
from clserver.training.early_stopping import EARLY_STOPPING, EarlyStoppingPlugin, holdout_indices
from clserver.training.loop import stream_to_avalanche, strategy_build
from clserver.training.streams import class_incremental, load_digits_arrays
from modelfactory.architectures import architecture_build, architecture_params

SETUP = "/base-scenario/setup/"
TINY = {"benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 3},
        "model": {"architecture": "simple_mlp", "params": {"hidden_size": 32}},
        "strategy": {"name": "replay", "params": {"mem_size": 50}},
        "training": {"epochs": 15, "train_mb_size": 32, "device": "cpu", "seed": 4,
                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}}
STOP = {"patience": 2, "min_epochs": 2}


class Crash(BaseException):
    """A worker killed mid-experience: nothing of the job runner's handling runs (a BaseException)."""


def run_job(user, name: str, options: dict) -> Experiment:
    experiment = services.experiment_setup(owner=user, raw={"exp_name": name, **options})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        services.experiment_execute(owner=user, name=name)
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    return experiment


def with_training(**training) -> dict:
    return {**TINY, "training": {**TINY["training"], **training}}


@pytest.mark.parametrize("early_stopping, words", [
    ({"patience": 0}, "training.early_stopping.patience must be at least 1."),
    ({"min_epochs": 30}, "training.early_stopping.min_epochs is 30 but training.epochs is 10; it may be at most "
                         "the epochs."),
    ({"metric": "f1"}, "training.early_stopping.metric must be one of: accuracy, loss."),
    ({"min_delta": -0.1}, "training.early_stopping.min_delta must be at least 0.0."),
    ({"validation_fraction": 0.9}, "training.early_stopping.validation_fraction must be at most 0.5."),
    ({"patience": 2, "wait": 3}, "training.early_stopping has unknown key 'wait'"),
    ("yes", "training.early_stopping must be an object."),
])
def test_bad_early_stopping_options_are_refused_at_setup_with_one_sentence(api, user, early_stopping, words):
    response = api.post(SETUP, {"exp_name": "x", "training": {"early_stopping": early_stopping}}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error.startswith(words) and error.endswith(".") and "\n" not in error
    assert Experiment.objects.count() == 0


def test_early_stopping_is_off_unless_given_and_given_is_filled_with_defaults(api, user):
    off = api.post(SETUP, {"exp_name": "off"}, format="json").json()
    assert off["options"]["training"]["early_stopping"] is None
    on = api.post(SETUP, {"exp_name": "on", "training": {"early_stopping": {"patience": 3}}}, format="json").json()
    assert on["options"]["training"]["early_stopping"] == {
        "enabled": True, "patience": 3, "min_epochs": 1, "metric": "accuracy", "min_delta": 0.0,
        "validation_fraction": 0.1, "lr_drops": 0, "lr_drop_factor": 0.1}
    assert [f["name"] for f in EARLY_STOPPING.describe()["fields"]] == list(on["options"]["training"]["early_stopping"])


def test_an_experience_that_has_learned_stops_before_its_max_epochs_and_says_why(transactional_db, user):
    experiment = run_job(user, "stops", with_training(early_stopping=STOP))
    assert experiment.status == "completed", experiment.error
    experiences = experiment.results["experiences"]
    for record in experiences:
        assert 2 <= record["epochs_trained"] < 15
        assert record["stopped"] == "no improvement in 2 epochs"
    # It learned: far above chance (0.2 among five classes) on what it trained last.
    assert experiences[-1]["accuracy"] > 0.8
    # What trains is what is not held out: 10 % of each experience decides when it stops.
    full = run_job(user, "full", TINY)
    assert [e["train_samples"] for e in experiences] == [
        e["train_samples"] - round(e["train_samples"] * 0.1) for e in full.results["experiences"]]
    assert experiment.results["cost"]["samples_processed"] < 0.6 * full.results["cost"]["samples_processed"]
    ends = experiment.events.filter(type="experience_end").order_by("id")
    assert [e.payload["epochs_trained"] for e in ends] == [r["epochs_trained"] for r in experiences]


def test_without_early_stopping_an_experiment_trains_every_epoch_and_learns_the_same(transactional_db, user):
    short = {**TINY, "training": {**TINY["training"], "epochs": 3}}
    absent = run_job(user, "absent", short)
    null = run_job(user, "null", with_training(epochs=3, early_stopping=None))
    disabled = run_job(user, "disabled", with_training(epochs=3, early_stopping={"enabled": False}))
    matrix = absent.results["metrics"]["accuracy_matrix"]
    assert null.results["metrics"]["accuracy_matrix"] == matrix
    assert disabled.results["metrics"]["accuracy_matrix"] == matrix
    for record in absent.results["experiences"]:
        assert record["epochs_trained"] == 3 and record["stopped"] == "max epochs"
    assert [e["train_samples"] for e in null.results["experiences"]] == [
        e["train_samples"] for e in absent.results["experiences"]]


def test_a_crash_mid_experience_resumes_with_the_stopping_record_of_what_was_trained(transactional_db, user):
    options = with_training(early_stopping=STOP)
    whole = run_job(user, "whole", options)
    original = runner.ExperimentRun.epoch_end

    def killed_in_the_second_experience(self, *, epoch: int, loss: float) -> None:
        original(self, epoch=epoch, loss=loss)
        if self.current == 1 and epoch == 2:
            raise Crash()

    experiment = services.experiment_setup(owner=user, raw={"exp_name": "crashed", **options})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        services.experiment_execute(owner=user, name="crashed")
    with mock.patch.object(runner.ExperimentRun, "epoch_end", killed_in_the_second_experience):
        with pytest.raises(Crash):
            ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    assert experiment.status == JobStatus.RUNNING
    assert [e["epochs_trained"] for e in experiment.results["experiences"]] == [
        whole.results["experiences"][0]["epochs_trained"]]
    # What the reaper does on a missed heartbeat; the next attempt resumes from the checkpoint.
    Experiment.objects.filter(pk=experiment.pk).update(status=JobStatus.QUEUED, run_token="", heartbeat_at=None)
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    assert experiment.status == "completed" and experiment.attempts == 2, experiment.error
    assert experiment.events.filter(type="resumed").count() == 1
    for resumed, uninterrupted in zip(experiment.results["experiences"], whole.results["experiences"], strict=True):
        assert resumed["epochs_trained"] == uninterrupted["epochs_trained"]
        assert resumed["stopped"] == uninterrupted["stopped"]
        assert resumed["train_samples"] == uninterrupted["train_samples"]
    # The checkpoint carries the RNG: the resumed experience trains as it would have.
    assert experiment.results["metrics"]["accuracy_matrix"] == whole.results["metrics"]["accuracy_matrix"]


def test_the_held_out_part_is_the_same_on_every_run_of_a_seed_and_differs_by_experience():
    train, held = holdout_indices(n=100, fraction=0.1, seed=7, index=0)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert np.array_equal(held, holdout_indices(n=100, fraction=0.1, seed=7, index=0)[1])
    assert not np.array_equal(held, holdout_indices(n=100, fraction=0.1, seed=7, index=1)[1])
    assert len(holdout_indices(n=3, fraction=0.1, seed=0, index=0)[1]) == 1


def test_the_model_kept_is_the_best_on_the_held_out_data_and_the_next_experience_trains_again():
    x, y = load_digits_arrays()
    keep = np.random.RandomState(0).permutation(len(y))[:400]
    stream = class_incremental(x[keep], y[keep], n_experiences=2, seed=1, test_size=0.2, input_shape=[64],
                               name="tiny")
    torch.manual_seed(0)
    model = architecture_build(architecture="simple_mlp", params=architecture_params(
        architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 16}))
    options = {"training": {"epochs": 40, "train_mb_size": 16, "eval_mb_size": 64,
                            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}},
               "strategy": {"name": "naive", "params": {}}}
    plugin = EarlyStoppingPlugin(options=EARLY_STOPPING.coerce({"patience": 1, "metric": "loss"}, "training"))
    strategy = strategy_build(model=model, options=options, device=torch.device("cpu"), plugins=[plugin])
    scenario = stream_to_avalanche(stream)
    for i in range(2):
        plugin.held_out = stream.test[i]
        strategy.train(scenario.train_stream[i], eval_streams=[])
        assert 1 < plugin.epochs_trained < 40 and plugin.stopped == "no improvement in 1 epoch"
        # The weights left are those of the best epoch, one before the last.
        assert plugin.score(strategy.model, torch.device("cpu")) == pytest.approx(plugin.best)
