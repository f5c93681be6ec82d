"""Every registered strategy trains an uploaded torch.export program, through the real job runner."""
from __future__ import annotations

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile

from clserver.training.strategies import STRATEGIES
from modelfactory.services import registered_model_create
from tests.clserver.training.test_strategies import PARAMS, SMALL, run_job
from tests.modelfactory.programs import ResidualNet, exported


@pytest.fixture
def program(transactional_db, user) -> str:
    torch.manual_seed(0)
    raw = exported(ResidualNet(hidden=32), torch.randn(4, 64))
    registered_model_create(owner=user, name="residual", architecture="", params={},
                            file=SimpleUploadedFile("residual.pt2", raw))
    return "residual"


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_trains_an_uploaded_program(transactional_db, user, program, name):
    options = {**SMALL, "model": {"registered": program}, "strategy": {"name": name, "params": PARAMS.get(name, {})}}
    experiment = run_job(user, f"program-{name}", options)
    assert experiment.status == "completed", experiment.error
    assert experiment.options["model"]["architecture"] == "program"
    # Two epochs beat chance (0.2 among the five classes) on what was trained last.
    assert experiment.results["experiences"][-1]["accuracy"] > 0.3


def test_an_experiment_continues_from_one_that_trained_a_program(transactional_db, user, program):
    first = run_job(user, "program-first", {**SMALL, "model": {"registered": program},
                                            "strategy": {"name": "replay", "params": {"mem_size": 50}}})
    assert first.status == "completed", first.error
    options = {key: value for key, value in SMALL.items() if key != "model"}
    second = run_job(user, "program-second", {**options, "from_experiment": "program-first",
                                              "strategy": {"name": "replay", "params": {"mem_size": 50}}})
    assert second.status == "completed", second.error
    assert second.options["model"]["architecture"] == "program"
    # It starts where the first ended: its initial accuracy is the first one's final row, not chance.
    final_row = first.results["metrics"]["accuracy_matrix"][-1]
    assert second.results["metrics"]["initial_accuracy"] == pytest.approx(final_row, abs=1e-6)
