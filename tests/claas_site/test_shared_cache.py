"""The embedded mode's cache is one count for every web process: sign-in attempts counted in two
processes at once add up, and no increment is lost."""
from __future__ import annotations

import subprocess
import sys
import time

from django.conf import settings
from django.core.cache import cache

from claas_site.shared_cache import SQLiteCache
from tests.service import ROOT


def test_the_embedded_mode_uses_the_shared_cache():
    assert settings.CACHES["default"]["BACKEND"] == "claas_site.shared_cache.SQLiteCache"
    cache.set("claas-test-key", {"a": 1}, timeout=60)
    assert cache.get("claas-test-key") == {"a": 1}


def test_values_expire_add_only_adds_and_incr_needs_a_number(tmp_path):
    c = SQLiteCache(str(tmp_path / "c.sqlite3"), {})
    assert c.add("k", 0, timeout=60) and not c.add("k", 5, timeout=60)
    assert c.incr("k") == 1 and c.incr("k", 4) == 5 and c.decr("k") == 4
    c.set("gone", "x", timeout=0.05)
    time.sleep(0.1)
    assert c.get("gone", "default") == "default" and c.add("gone", 1, timeout=60)
    try:
        c.incr("missing")
    except ValueError:
        pass
    else:
        raise AssertionError("incr of a missing key must raise ValueError, as Django's caches do")
    c.delete_many(["k", "gone"])
    assert c.get("k") is None


COUNT = """
import sys
from claas_site.shared_cache import SQLiteCache
c = SQLiteCache(sys.argv[1], {})
c.add("attempts", 0, timeout=60)
for _ in range(300):
    c.incr("attempts")
"""


def test_increments_from_several_processes_at_once_all_count(tmp_path):
    path = str(tmp_path / "shared.sqlite3")
    workers = [subprocess.Popen([sys.executable, "-c", COUNT, path], cwd=ROOT) for _ in range(4)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    assert SQLiteCache(path, {}).get("attempts") == 1200


SIGN_IN = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "claas_site.settings"
import django
django.setup()
from claas_site.login_limit import login_attempt_start
print(sum(1 for _ in range(int(sys.argv[1])) if login_attempt_start(username="mallory", address="10.0.0.9") == 0))
"""


def test_two_processes_share_one_sign_in_limit(tmp_path):
    """What two web processes of ./claas run do: together they let through the limit, not twice it."""
    env = {"CLAAS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    runs = [subprocess.Popen([sys.executable, "-c", SIGN_IN, "40"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]
    allowed = sum(int(run.communicate(timeout=120)[0].strip().splitlines()[-1]) for run in runs)
    per_username, _window = settings.LOGIN_FAILURES_PER_USERNAME
    assert allowed == per_username  # 10 by default: not 10 in each process
