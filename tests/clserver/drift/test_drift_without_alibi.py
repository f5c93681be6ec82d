"""CLaaS without alibi-detect: a process in which `import alibi_detect` fails (a meta-path finder raising
ModuleNotFoundError, installed before Django starts) passes Django's checks, lists ks, mmd and lsdd as
CLaaS's own, fits them and flags rotated digits with alibi-detect's answers (within the tolerance of
tests/clserver/drift/test_drift_own.py), and refuses any other detector with one sentence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clserver.drift import detectors as drift
from tests.clserver.drift.test_drift_own import DISTANCE_RTOL, P_VAL_TOLERANCE, ROOT, digits_split
from tests.service import inherited_environment

SCRIPT = r"""
import json, sys
from pathlib import Path


class NoAlibiDetect:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "alibi_detect":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoAlibiDetect())
import django

django.setup()
from django.core.management import call_command

call_command("check")
call_command("migrate", verbosity=0)

from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from clserver.deployments.models import Deployment
from clserver.drift import detectors as drift
from tests.clserver.drift.test_drift_own import digits_split

out = {}
api = APIClient(HTTP_HOST="localhost")
api.force_authenticate(user=get_user_model().objects.create_user(username="alice", password="alice-password"))
out["listed"] = {d["name"]: [d["implementation"], d["licence"], d["available"]]
                 for d in api.get("/api/detectors/").json()}
refused = api.post("/api/deployments/", {"name": "online", "source": {"exp_name": "digits"},
                                         "detector": {"name": "cvm_online"}}, format="json")
out["refused"] = [refused.status_code, refused.json()["error"], Deployment.objects.count()]
try:
    drift.detector_fit(options={"name": "classifier"}, x_ref=None, model=None, input_shape=[64])
except Exception as exc:
    out["fit_refused"] = [type(exc).__name__, str(exc)]
digits = digits_split()
out["checks"] = {}
for name in ("ks", "mmd", "lsdd"):
    options = drift.detector_options(raw={"name": name})
    fitted = drift.detector_fit(options=options, x_ref=digits["ref"], model=None, input_shape=[64])
    drift.detector_save(fitted, Path(sys.argv[1]) / name)
    loaded = drift.detector_load(Path(sys.argv[1]) / name)
    out["checks"][name] = {"class": type(loaded).__module__ + "." + type(loaded).__name__}
    for batch in ("same", "rotated"):
        r = drift.detector_check(detector=loaded, options=options, x=digits[batch])
        out["checks"][name][batch] = [r.is_drift, r.p_val, r.distance, r.threshold]
out["alibi_modules"] = sorted(m for m in sys.modules if m.startswith("alibi_detect"))
print("RESULT " + json.dumps(out))
"""

MESSAGE = ("detector '{}' needs alibi-detect, which is not installed; use ks, mmd or lsdd, or install "
           "alibi-detect (Business Source License 1.1).")


@pytest.fixture(scope="module")
def without_alibi(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = tmp_path_factory.mktemp("no-alibi")
    env = {**inherited_environment(), "CLAAS_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "claas_site.settings",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(data / "detectors")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def test_without_alibi_detect_claas_starts_and_never_imports_it(without_alibi):
    assert without_alibi["alibi_modules"] == []


def test_without_alibi_detect_ks_mmd_and_lsdd_are_listed_as_claas_own_and_the_others_unavailable(without_alibi):
    listed = without_alibi["listed"]
    assert {n: v for n, v in listed.items() if v[2]} == {
        n: ["claas", "this repository's own code", True] for n in ("ks", "mmd", "lsdd")}
    assert listed["cvm_online"] == ["alibi-detect (not installed)", "Business Source License 1.1", False]


def test_without_alibi_detect_another_detector_answers_400_naming_the_package_and_creates_nothing(without_alibi):
    assert without_alibi["refused"] == [400, MESSAGE.format("cvm_online"), 0]
    assert without_alibi["fit_refused"] == ["InvalidInput", MESSAGE.format("classifier")]


@pytest.mark.parametrize("name", ["ks", "mmd", "lsdd"])
def test_without_alibi_detect_own_detectors_flag_rotated_digits_as_alibi_detect_does(without_alibi, name):
    checks = without_alibi["checks"][name]
    assert checks["class"] == f"clserver.drift.own.{name.upper()}"
    digits = digits_split()
    options = drift.detector_options(raw={"name": name})
    alibi = drift.detector_fit(options=options, x_ref=digits["ref"], model=None, input_shape=[64])
    assert type(alibi).__module__.startswith("alibi_detect.")
    for batch, drifted in (("same", False), ("rotated", True)):
        is_drift, p_val, distance, threshold = checks[batch]
        theirs = drift.detector_check(detector=alibi, options=options, x=digits[batch])
        assert is_drift is theirs.is_drift is drifted
        assert threshold == theirs.threshold
        assert distance == pytest.approx(theirs.distance, rel=DISTANCE_RTOL)
        if name == "ks":
            assert p_val == pytest.approx(theirs.p_val, rel=1e-6, abs=1e-12)
        else:
            assert abs(p_val - theirs.p_val) <= P_VAL_TOLERANCE
