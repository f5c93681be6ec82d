"""CLaaS's own ks, mmd and lsdd detectors give alibi-detect's answers on the same data, and CLaaS runs
without alibi-detect: those three from its own code, the others refused with one sentence.

Tolerance of equality with alibi-detect 0.13 (also stated in README.md): ks p-values within 1e-6
relative (statistics equal); mmd and lsdd distances (MMD^2, LSDD) within 1e-5 relative and permutation
p-values within 0.02 with the same number of permutations; the drift decision always equal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from clserver.drift import detectors as drift
from clserver.drift import implementation, own
from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split

ROOT = Path(__file__).resolve().parents[3]
P_VAL_TOLERANCE = 0.02
DISTANCE_RTOL = 1e-5
KS_P_RTOL = 1e-6


def digits_split() -> dict[str, np.ndarray]:
    """tests/clserver/drift/test_drift.py's digits: a reference, held-out digits, and held-out ones turned."""
    x, y = load_digits_arrays()
    tr, te = stratified_split(y, 0.2, 1)
    rng = np.random.RandomState(0)
    ref = x[np.sort(rng.choice(tr, 300, replace=False))]
    return {"ref": ref.astype(np.float32), "same": x[te[::2]].astype(np.float32),
            "rotated": rotate_images(x[te[1::2]].reshape(-1, 8, 8), 90).reshape(-1, 64).astype(np.float32)}


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    return digits_split()


def _projection(dim: int = 8) -> torch.nn.Module:
    return drift.PREPROCESSORS.get("random_projection", "p").builder(n_features=64, model=None, input_shape=[64],
                                                                      dim=dim, seed=0)


def _pair(name: str, ref: np.ndarray, *, n_permutations: int = 100, project: bool = False) -> tuple:
    """CLaaS's detector and plain alibi-detect's (no fast paths), fitted under the same seed."""
    from alibi_detect.cd import KSDrift, LSDDDrift, MMDDrift
    from alibi_detect.cd.pytorch import preprocess_drift

    ours_pre = theirs_pre = None
    if project:
        encoder = _projection()
        ours_pre = partial(own.preprocess_batches, model=encoder, device=torch.device("cpu"), batch_size=64)
        theirs_pre = partial(preprocess_drift, model=encoder, device=torch.device("cpu"), batch_size=64)
    with drift.seeded(drift.FIT_SEED):
        if name == "ks":
            ours = own.KS(ref, p_val=0.05, correction="bonferroni", preprocess_fn=ours_pre)
        else:
            ours = own.OWN[name](ref, p_val=0.05, n_permutations=n_permutations, preprocess_fn=ours_pre)
    with drift.seeded(drift.FIT_SEED):
        if name == "ks":
            theirs = KSDrift(ref, p_val=0.05, correction="bonferroni", preprocess_fn=theirs_pre)
        else:
            cls = {"mmd": MMDDrift, "lsdd": LSDDDrift}[name]
            theirs = cls(ref, backend="pytorch", p_val=0.05, n_permutations=n_permutations, device="cpu",
                         preprocess_fn=theirs_pre)
    return ours, theirs


def _predict(detector: object, x: np.ndarray) -> dict:
    with drift.seeded(drift.CHECK_SEED):
        return detector.predict(x, return_p_val=True, return_distance=True)["data"]


def assert_equal_within_tolerance(name: str, ours: dict, theirs: dict) -> None:
    assert bool(ours["is_drift"]) is bool(theirs["is_drift"])
    if name == "ks":
        np.testing.assert_array_equal(ours["distance"], theirs["distance"])
        np.testing.assert_allclose(ours["p_val"], theirs["p_val"], rtol=KS_P_RTOL, atol=1e-12)
        assert ours["threshold"] == theirs["threshold"]
        return
    assert ours["distance"] == pytest.approx(theirs["distance"], rel=DISTANCE_RTOL, abs=1e-9)
    assert abs(ours["p_val"] - theirs["p_val"]) <= P_VAL_TOLERANCE
    assert ours["distance_threshold"] == pytest.approx(theirs["distance_threshold"], rel=DISTANCE_RTOL, abs=1e-6)
    assert ours["threshold"] == theirs["threshold"]


@pytest.mark.parametrize("project", [False, True], ids=["raw", "random_projection"])
@pytest.mark.parametrize("name", ["ks", "mmd", "lsdd"])
def test_own_detectors_answer_as_alibi_detect_on_held_out_and_rotated_digits(digits, name, project):
    ours, theirs = _pair(name, digits["ref"], project=project)
    for batch, drifted in (("same", False), ("rotated", True)):
        mine, alibi = _predict(ours, digits[batch]), _predict(theirs, digits[batch])
        assert_equal_within_tolerance(name, mine, alibi)
        assert bool(mine["is_drift"]) is drifted


@pytest.mark.parametrize("name", ["mmd", "lsdd"])
def test_permutation_p_values_stay_within_tolerance_over_several_seeds(digits, name):
    # A milder shift than rotation, so that the p-values lie inside (0, 1) where permutations matter.
    shifted = np.clip(digits["same"] + 0.02, 0, 1).astype(np.float32)
    ours, theirs = _pair(name, digits["ref"], n_permutations=200)
    for seed in range(3):
        with drift.seeded(seed):
            mine = ours.score(shifted)
        with drift.seeded(seed):
            alibi = theirs.score(shifted)
        assert abs(mine[0] - alibi[0]) <= P_VAL_TOLERANCE
        assert mine[1] == pytest.approx(alibi[1], rel=DISTANCE_RTOL)


@pytest.mark.parametrize("name", ["ks", "mmd", "lsdd"])
def test_a_saved_own_detector_loads_and_answers_the_same(digits, name, tmp_path: Path):
    options = drift.detector_options(raw={"name": name, "preprocess": {"name": "random_projection", "dim": 8}})
    encoder = _projection()
    pre = partial(own.preprocess_batches, model=encoder, device=torch.device("cpu"), batch_size=64)
    with drift.seeded(drift.FIT_SEED):
        params = {"correction": "bonferroni"} if name == "ks" else {"n_permutations": 100}
        fitted = own.OWN[name](digits["ref"], p_val=0.05, preprocess_fn=pre, **params)
    drift.detector_save(fitted, tmp_path / "detector")
    loaded = drift.detector_load(tmp_path / "detector")
    assert type(loaded) is type(fitted)
    for batch in ("same", "rotated"):
        before = drift.detector_check(detector=fitted, options=options, x=digits[batch])
        after = drift.detector_check(detector=loaded, options=options, x=digits[batch])
        assert (after.is_drift, after.p_val, after.distance, after.threshold) == (
            before.is_drift, before.p_val, before.distance, before.threshold)
        assert after.is_drift is (batch == "rotated")


def test_with_alibi_detect_installed_every_detector_is_alibi_detects():
    version = implementation.alibi_version()
    assert version is not None and version.startswith("0.13.")
    listed = drift.detector_list()
    assert {d["implementation"] for d in listed} == {f"alibi-detect {version}"}
    assert {d["licence"] for d in listed} == {"Business Source License 1.1"}
    fitted = drift.detector_fit(options=drift.detector_options(raw={"name": "ks"}),
                                x_ref=digits_split()["ref"], model=None, input_shape=[64])
    assert type(fitted).__module__.startswith("alibi_detect.")


def test_ks_with_the_fdr_correction_reports_one_threshold_whether_or_not_it_sees_drift(digits):
    options = drift.detector_options(raw={"name": "ks", "correction": "fdr"})
    alibi = drift.detector_fit(options=options, x_ref=digits["ref"], model=None, input_shape=[64])
    with drift.seeded(drift.FIT_SEED):
        ours = own.KS(digits["ref"], p_val=0.05, correction="fdr")
    for batch, drifted in (("same", False), ("rotated", True)):
        mine, theirs = (drift.detector_check(detector=d, options=options, x=digits[batch]) for d in (ours, alibi))
        assert (mine.is_drift, mine.threshold, mine.distance) == (theirs.is_drift, theirs.threshold, theirs.distance)
        assert mine.p_val == pytest.approx(theirs.p_val, rel=KS_P_RTOL, abs=1e-12)
        assert mine.is_drift is drifted and (mine.p_val < mine.threshold) is drifted
    assert mine.threshold > 0.05 / 64  # with drift: the largest bar q i / n met, above Bonferroni's
