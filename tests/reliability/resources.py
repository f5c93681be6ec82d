"""A user's resources, made quickly in-process: a completed experiment, a dataset, a model, a deployment."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from clserver.models import Experiment, JobStatus
from clserver.experiments.options import options_validate
from clserver.experiments.services import experiment_dir
from modelfactory.architectures import architecture_build, architecture_params

OPTIONS = {"model": {"architecture": "simple_mlp", "params": {"hidden_size": 16}},
           "benchmark": {"name": "split_digits", "n_experiences": 2, "seed": 1},
           "strategy": {"name": "naive"}, "training": {"epochs": 1, "device": "cpu"}}
INPUT = [[0.5] * 64]


def token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def weights_file(**params: Any) -> SimpleUploadedFile:
    """A simple_mlp state_dict as a user would upload it."""
    model = architecture_build(architecture="simple_mlp",
                               params=architecture_params(architecture="simple_mlp", params=params))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return SimpleUploadedFile("weights.pt", buffer.getvalue())


def npz_file(n: int = 60) -> SimpleUploadedFile:
    """A dataset of digits-shaped rows (64 features, 10 classes)."""
    rng = np.random.RandomState(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.rand(n, 64).astype(np.float32), y=np.arange(n) % 10)
    return SimpleUploadedFile("data.npz", buffer.getvalue())


def experiment_completed(*, owner: Any, name: str) -> Experiment:
    """A completed experiment with a final model file, as the worker would leave it (untrained weights)."""
    validated = options_validate(owner=owner, raw={**OPTIONS, "exp_name": name})
    experiment = Experiment.objects.create(owner=owner, name=name, options=validated.options,
                                           status=JobStatus.COMPLETED)
    final = experiment_dir(experiment) / "final_model.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    torch.save(architecture_build(architecture="simple_mlp", params=validated.options["model"]["params"])
               .state_dict(), final)
    experiment.results = {"model": {"save_path": str(final)}}
    experiment.save()
    return experiment


def dataset_upload(client: APIClient, name: str) -> None:
    response = client.post("/api/datasets/", {"name": name, "file": npz_file()}, format="multipart")
    assert response.status_code == 201, response.content


def model_register(client: APIClient, name: str) -> None:
    response = client.post("/api/models/", {"name": name, "architecture": "simple_mlp",
                                            "params": {"hidden_size": 16}}, format="json")
    assert response.status_code == 201, response.content


def deployment_create(client: APIClient, name: str, exp_name: str) -> None:
    """A deployment of a completed experiment with a quick detector and manual updates."""
    response = client.post("/api/deployments/", {
        "name": name, "source": {"exp_name": exp_name}, "detector": {"name": "ks"},
        "update": {"trigger": "manual", "min_samples": 1}}, format="json")
    assert response.status_code == 201, response.content
