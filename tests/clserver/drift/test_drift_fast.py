"""The vectorised, chunked KS, MMD and LSDD scoring gives plain alibi-detect's answers, and survives saving
and loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from clserver.drift import detectors as drift
from clserver.drift import budget as drift_budget
from clserver.drift.fast import is_accelerated, ks_asymptotic_p_values, ks_statistics
from clserver.training.streams import load_digits_arrays

N = 500


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    x, _ = load_digits_arrays()
    # Shuffled, then cut in disjoint parts: the file's order follows its writers.
    idx = np.random.RandomState(0).permutation(len(x))
    return {"ref": x[idx[:N]].astype(np.float32), "same": x[idx[N:2 * N]].astype(np.float32),
            "shifted": np.clip(x[idx[2 * N:3 * N]] + 0.1, 0, 1).astype(np.float32),
            # A milder drift (benchmark 3's): some features move, with p-values between 0 and 1.
            "brightened": np.clip(x[idx[2 * N:3 * N]] * 1.1, 0, 1).astype(np.float32)}


def _fit(name: str, ref: np.ndarray, **raw) -> tuple[dict, object]:
    options = drift.detector_options(raw={"name": name, **raw})
    return options, drift.detector_fit(options=options, x_ref=ref, model=None, input_shape=[ref.shape[1]])


def _plain(name: str, ref: np.ndarray, options: dict) -> object:
    """The same detector straight from alibi-detect, without the vectorised scoring."""
    from alibi_detect.cd import KSDrift, LSDDDrift, MMDDrift

    with drift.seeded(drift.FIT_SEED):
        if name == "ks":
            return KSDrift(ref, p_val=options["p_val"], correction=options["correction"])
        if name == "lsdd":
            return LSDDDrift(ref, backend="pytorch", p_val=options["p_val"],
                             n_permutations=options["n_permutations"], device="cpu")
        return MMDDrift(ref, backend="pytorch", p_val=options["p_val"], n_permutations=options["n_permutations"],
                        device="cpu")


def _predict(detector: object, x: np.ndarray) -> dict:
    with drift.seeded(drift.CHECK_SEED):
        return detector.predict(x, return_p_val=True, return_distance=True)["data"]


def test_fitted_ks_mmd_and_lsdd_detectors_are_accelerated_and_others_are_not(digits):
    for name in ("ks", "mmd", "lsdd"):
        assert is_accelerated(_fit(name, digits["ref"])[1])
    _, tabular = _fit("tabular", digits["ref"])
    assert not is_accelerated(tabular)
    assert "feature_score" not in vars(tabular)


def test_ks_matches_plain_alibi_on_drifted_and_undrifted_digits(digits):
    options, fast = _fit("ks", digits["ref"])
    plain = _plain("ks", digits["ref"], options)
    assert not is_accelerated(plain)
    for batch, drifted in (("same", False), ("brightened", True), ("shifted", True)):
        ours, theirs = _predict(fast, digits[batch]), _predict(plain, digits[batch])
        assert bool(ours["is_drift"]) is bool(theirs["is_drift"]) is drifted
        assert np.array_equal(ours["distance"], theirs["distance"])
        np.testing.assert_allclose(ours["p_val"], theirs["p_val"], rtol=1e-6, atol=1e-7)
        assert ours["threshold"] == theirs["threshold"]


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_ks_statistics_and_p_values_are_scipys_per_feature(digits, alternative):
    ref = digits["ref"]
    for batch in (digits["same"][:300], digits["brightened"]):  # unequal and equal sample sizes
        d = ks_statistics(ref, batch, alternative)
        p = ks_asymptotic_p_values(d, len(ref), len(batch), alternative)
        expected = [ks_2samp(ref[:, f], batch[:, f], alternative=alternative, method="asymp") for f in range(64)]
        assert np.array_equal(d, [r.statistic for r in expected])
        np.testing.assert_allclose(p, [r.pvalue for r in expected], rtol=1e-6, atol=1e-12)


def test_mmd_matches_plain_alibi_on_drifted_and_undrifted_digits(digits):
    options, fast = _fit("mmd", digits["ref"])
    plain = _plain("mmd", digits["ref"], options)
    assert not is_accelerated(plain)
    results = {}
    for batch in ("same", "shifted"):
        ours, theirs = _predict(fast, digits[batch]), _predict(plain, digits[batch])
        assert ours["distance"] == theirs["distance"]  # the observed MMD^2, to the last bit
        assert ours["is_drift"] == theirs["is_drift"]
        # The same permutations: p-values agree unless a permuted MMD^2 lies within float32 rounding.
        assert abs(ours["p_val"] - theirs["p_val"]) <= 0.02
        assert ours["distance_threshold"] == pytest.approx(theirs["distance_threshold"], abs=1e-6)
        results[batch] = ours
    assert results["same"]["p_val"] > 0.2 and not results["same"]["is_drift"]
    assert results["shifted"]["p_val"] <= 0.01 and results["shifted"]["is_drift"]


@pytest.mark.parametrize("name", ["ks", "mmd"])
def test_a_saved_and_reloaded_detector_is_accelerated_and_answers_the_same(digits, name, tmp_path: Path):
    options, fast = _fit(name, digits["ref"])
    before = [drift.detector_check(detector=fast, options=options, x=digits[b]) for b in ("same", "shifted")]
    drift.detector_save(fast, tmp_path / "detector")
    loaded = drift.detector_load(tmp_path / "detector")
    assert is_accelerated(loaded)
    after = [drift.detector_check(detector=loaded, options=options, x=digits[b]) for b in ("same", "shifted")]
    assert [(r.is_drift, r.p_val, r.distance, r.threshold) for r in after] == [
        (r.is_drift, r.p_val, r.distance, r.threshold) for r in before]
    assert [r.is_drift for r in after] == [False, True]


def test_a_reloaded_lsdd_detector_is_accelerated_and_scores_as_alibi_would(digits, tmp_path: Path):
    # (alibi's own save and load of an LSDD detector moves its normalised reference by rounding.)
    options, fast = _fit("lsdd", digits["ref"])
    drift.detector_save(fast, tmp_path / "detector")
    loaded = drift.detector_load(tmp_path / "detector")
    assert is_accelerated(loaded)
    inner = loaded._detector
    for batch in ("same", "shifted"):
        with drift.seeded(drift.CHECK_SEED):
            ours = inner.score(digits[batch])
        with drift.seeded(drift.CHECK_SEED):
            theirs = type(inner).score(inner, digits[batch])
        assert ours == theirs


def test_ks_in_blocks_of_features_gives_the_same_answers(digits, monkeypatch):
    options, fast = _fit("ks", digits["ref"])
    whole = _predict(fast, digits["brightened"])
    # Room for 3 features of 1,000 values at a time: 22 blocks instead of one.
    monkeypatch.setattr(drift_budget, "CHUNK_BYTES", 3 * drift_budget.KS_BYTES_PER_VALUE * 2 * N)
    blocks = _predict(fast, digits["brightened"])
    assert np.array_equal(blocks["distance"], whole["distance"]) and np.array_equal(blocks["p_val"], whole["p_val"])


@pytest.mark.parametrize("chunk_bytes", [1, 200_000, 2**40], ids=["one-permutation", "some", "all-at-once"])
def test_lsdd_in_chunks_of_permutations_is_plain_alibi_to_the_last_bit(digits, monkeypatch, settings, chunk_bytes):
    monkeypatch.setattr(drift_budget, "CHUNK_BYTES", chunk_bytes)
    settings.DRIFT_MEMORY_BYTES = 2**42  # room for chunks of any size
    options, fast = _fit("lsdd", digits["ref"], n_permutations=300)
    plain = _plain("lsdd", digits["ref"], options)
    assert not is_accelerated(plain)
    for batch, drifted in (("same", False), ("brightened", True), ("shifted", True)):
        ours, theirs = _predict(fast, digits[batch]), _predict(plain, digits[batch])
        assert bool(ours["is_drift"]) is drifted
        for key in ("is_drift", "p_val", "distance", "distance_threshold", "threshold"):
            assert ours[key] == theirs[key], key


def test_mmd_kernel_computed_in_blocks_of_rows_gives_the_same_answers(digits, monkeypatch):
    options, fast = _fit("mmd", digits["ref"])
    whole = [_predict(fast, digits[b]) for b in ("same", "shifted")]
    # Blocks of 64 to 128 rows (KERNEL_MIN_ROWS) instead of one 500 x 500 kernel per block of K.
    monkeypatch.setattr(drift_budget, "CHUNK_BYTES", 1)
    blocks = [_predict(fast, digits[b]) for b in ("same", "shifted")]
    assert blocks == whole


def test_cvm_online_thresholds_do_not_depend_on_how_many_streams_are_simulated_at_once(digits):
    from alibi_detect.cd import CVMDriftOnline

    ref = digits["ref"][:100, :2]
    thresholds = []
    for batch_size in (64, 7):
        with drift.seeded(drift.FIT_SEED):
            thresholds.append(CVMDriftOnline(ref, ert=50, window_sizes=[10], n_bootstraps=300,
                                             batch_size=batch_size, verbose=False).thresholds)
    assert np.array_equal(thresholds[0], thresholds[1], equal_nan=True)
