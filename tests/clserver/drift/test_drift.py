"""The drift-detector registry: options, fitting, checks on digits, saving and loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from claas_site.errors import InvalidInput
from clserver.drift import detectors as drift
from clserver.training.streams import load_digits_arrays, rotate_images, stratified_split
from modelfactory.architectures import architecture_build, architecture_params


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    x, y = load_digits_arrays()
    tr, te = stratified_split(y, 0.2, 1)
    rng = np.random.RandomState(0)
    ref = x[np.sort(rng.choice(tr, 300, replace=False))]
    # Every other held-out digit: the file's order follows its writers, so a slice would not be i.i.d.
    return {"ref": ref, "same": x[te[::2]],
            "rotated": rotate_images(x[te[1::2]].reshape(-1, 8, 8), 90).reshape(-1, 64)}


@pytest.fixture(scope="module")
def model():
    return architecture_build(architecture="simple_mlp", params=architecture_params(architecture="simple_mlp",
                                                                                    params={}))


def test_options_fill_defaults_and_keep_the_contract_shape():
    assert drift.detector_options(raw={"name": "mmd", "p_val": 0.01}) == {
        "name": "mmd", "p_val": 0.01, "n_permutations": 100, "n_reference": 500, "preprocess": None}
    assert drift.detector_options(raw=None)["name"] == "mmd"
    online = drift.detector_options(raw={"name": "cvm_online", "window_size": 30,
                                         "preprocess": {"name": "random_projection", "dim": 4}})
    assert online["ert"] == 200.0 and online["window_size"] == 30
    assert online["preprocess"] == {"name": "random_projection", "dim": 4, "seed": 0}
    assert drift.detector_options(raw={"name": "ks", "preprocess": "penultimate"})["preprocess"] == {
        "name": "penultimate"}


@pytest.mark.parametrize("raw, message", [
    ({"name": "wasserstein"}, "Unknown detector 'wasserstein'; choose one of: ks, mmd, lsdd, chi_square, tabular, "
                              "classifier, mmd_online, lsdd_online, cvm_online."),
    ({"name": "mmd", "ert": 10}, "detector has unknown key 'ert' for mmd (allowed: n_permutations, n_reference, "
                                 "p_val)."),
    ({"name": "mmd_online", "window_size": 1}, "detector.window_size must be at least 2."),
    ({"name": "ks", "p_val": "small"}, "detector.p_val must be a number."),
    ({"name": "ks", "preprocess": {"name": "random_projection", "dim": 0}},
     "detector.preprocess.dim must be at least 1."),
    ([1], "detector must be an object such as {\"name\": \"mmd\", \"p_val\": 0.05}."),
])
def test_bad_options_fail_with_one_sentence(raw, message):
    with pytest.raises(InvalidInput) as caught:
        drift.detector_options(raw=raw)
    assert caught.value.message == message


@pytest.mark.parametrize("raw", [
    {"name": "ks"},
    {"name": "mmd", "n_permutations": 50},
    {"name": "mmd", "n_permutations": 50, "preprocess": {"name": "random_projection", "dim": 16}},
    {"name": "mmd", "n_permutations": 50, "preprocess": {"name": "penultimate"}},
    {"name": "lsdd", "n_permutations": 50},
    {"name": "chi_square"},
    {"name": "tabular", "categorical_features": [0, 63]},
    {"name": "classifier", "epochs": 2},
], ids=lambda raw: raw["name"] + ("+" + raw["preprocess"]["name"] if raw.get("preprocess") else ""))
def test_batch_detectors_see_rotated_digits_and_not_held_out_ones_after_a_save_and_load(raw, digits, model,
                                                                                        tmp_path: Path):
    options = drift.detector_options(raw=raw)
    fitted = drift.detector_fit(options=options, x_ref=digits["ref"], model=model, input_shape=[64])
    drift.detector_save(fitted, tmp_path / "detector")
    loaded = drift.detector_load(tmp_path / "detector")
    for detector in (fitted, loaded):
        same = drift.detector_check(detector=detector, options=options, x=digits["same"])
        turned = drift.detector_check(detector=detector, options=options, x=digits["rotated"])
        assert same.is_drift is False and same.p_val >= same.threshold
        assert turned.is_drift is True and turned.p_val < turned.threshold
    # Checks are seeded: the same batch gives the same answer in any process.
    again = drift.detector_check(detector=loaded, options=options, x=digits["same"])
    assert (again.p_val, again.distance) == (same.p_val, same.distance)


def test_feature_wise_checks_report_how_many_features_moved(digits):
    options = drift.detector_options(raw={"name": "ks"})
    detector = drift.detector_fit(options=options, x_ref=digits["ref"], model=None, input_shape=[64])
    turned = drift.detector_check(detector=detector, options=options, x=digits["rotated"])
    assert turned.threshold == pytest.approx(0.05 / 64)
    assert turned.details["n_features"] == 64 and turned.details["features_drifted"] > 10


@pytest.mark.parametrize("raw", [
    {"name": "mmd_online", "ert": 200, "window_size": 10, "n_bootstraps": 500, "n_reference": 60},
    {"name": "lsdd_online", "ert": 200, "window_size": 10, "n_bootstraps": 500, "n_reference": 60},
    {"name": "cvm_online", "ert": 100, "window_size": 10, "n_bootstraps": 1000, "n_reference": 60,
     "preprocess": {"name": "random_projection", "dim": 2}},
], ids=lambda raw: raw["name"])
def test_online_detectors_flag_rotated_digits_within_a_few_windows_and_resume_from_saved_state(raw, digits,
                                                                                               tmp_path: Path):
    options = drift.detector_options(raw=raw)
    detector = drift.detector_fit(options=options, x_ref=digits["ref"][:60], model=None, input_shape=[64])
    drift.detector_save(detector, tmp_path / "detector")
    first = drift.detector_check(detector=detector, options=options, x=digits["same"][:12])
    assert first.state_changed and first.p_val is None and first.details["time"] == 12
    drift.detector_state_save(detector, tmp_path / "state")
    restarted = drift.detector_load(tmp_path / "detector")
    drift.detector_state_load(restarted, tmp_path / "state")
    assert restarted.t == 12
    turned = drift.detector_check(detector=restarted, options=options, x=digits["rotated"][:80])
    assert turned.is_drift is True and turned.details["detected_at"] < 40
    assert turned.distance > turned.threshold


def test_cvm_online_asks_for_enough_bootstraps_for_its_run_time(digits):
    options = drift.detector_options(raw={"name": "cvm_online", "n_bootstraps": 1000})
    with pytest.raises(InvalidInput) as caught:
        drift.detector_fit(options=options, x_ref=digits["ref"][:100], model=None, input_shape=[64])
    assert caught.value.message.startswith("detector.n_bootstraps is 1000 but cvm_online with ert 200 on 64 "
                                           "features needs at least 12769")


def test_penultimate_preprocess_needs_a_model_with_a_penultimate_layer(digits):
    options = drift.detector_options(raw={"name": "mmd", "preprocess": {"name": "penultimate"}})
    with pytest.raises(InvalidInput, match="needs a model with a penultimate layer"):
        drift.detector_fit(options=options, x_ref=digits["ref"], model=None, input_shape=[64])


def test_the_registry_lists_kinds_and_preprocess_choices():
    listed = {d["name"]: d for d in drift.detector_list()}
    assert {n for n, d in listed.items() if d["kind"] == "online"} == {"mmd_online", "lsdd_online", "cvm_online"}
    assert listed["mmd"]["params"][0] == {"name": "p_val", "type": "float", "default": 0.05, "min": 1e-06,
                                          "max": 0.5, "help": listed["mmd"]["params"][0]["help"]}
    assert [p["name"] for p in listed["ks"]["preprocess"]] == ["random_projection", "penultimate"]
