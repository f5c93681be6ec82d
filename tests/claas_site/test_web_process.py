"""The web process keeps its long-lived objects out of the garbage collector's way, and still tears them
down at exit."""
from __future__ import annotations

import gc
import subprocess
import sys
import types

from clserver.serving.cache import LruCache
from tests.service import ROOT


def test_what_a_first_model_load_imports_is_left_out_of_later_collections(monkeypatch):
    cache = LruCache(2)

    def load() -> list[list[int]]:
        monkeypatch.setitem(sys.modules, "stands_for_torch", types.ModuleType("stands_for_torch"))
        return [[i] for i in range(1000)]  # objects the collector tracks, alive as long as the cache

    before = gc.get_freeze_count()
    model = cache.get("key", load)
    assert gc.get_freeze_count() >= before + 1000
    assert cache.get("key", lambda: None) is model  # cached: loaded once

    frozen = gc.get_freeze_count()
    cache.get("other", lambda: [[i] for i in range(1000)])  # imports nothing: no freeze
    assert gc.get_freeze_count() == frozen


def test_a_process_that_froze_its_objects_still_tears_them_down_at_exit():
    """Frozen objects are unfrozen at exit, so the interpreter's last collection finalizes them (extension
    modules that count their live objects report the ones it misses as leaks)."""
    code = ("import gc, sys\n"
            "class Noisy:\n"
            "    def __del__(self):\n"
            "        print('finalized', flush=True)\n"
            "noisy = Noisy()\n"
            "noisy.cycle = noisy  # garbage only a collection frees\n"
            "if sys.argv[1] == 'claas':\n"
            "    from clserver.serving.long_lived import freeze_long_lived\n"
            "    freeze_long_lived()\n"
            "else:\n"
            "    gc.freeze()\n"
            "del noisy\n")
    runs = {how: subprocess.run([sys.executable, "-c", code, how], cwd=ROOT, capture_output=True, text=True,
                                timeout=120) for how in ("claas", "plain")}
    assert all(done.returncode == 0 for done in runs.values()), {how: d.stderr for how, d in runs.items()}
    assert runs["claas"].stdout == "finalized\n"
    assert runs["plain"].stdout == ""  # a bare gc.freeze() leaves it behind: what the test tells apart
