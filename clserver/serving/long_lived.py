"""Keep what lives as long as the process out of the garbage collector's way.

After Django, torch and alibi-detect are imported and a model is loaded, the web process holds
close to a million objects that live until it exits: modules, classes, functions. Python's
collector still walks all of them in every full collection, a pause of several hundred
milliseconds on a small machine that some unlucky request waits out. `gc.freeze()` moves the
objects alive at that moment into a generation the collector never scans; what is created
afterwards is collected as usual.

It is done once the application is built, and again after a serving cache loads something that
imported new modules (the first model brings torch in, the first detector alibi-detect). Garbage
that happens to be waiting for a collection at that moment is frozen with the rest and never
reclaimed; tying the freeze to imports keeps that to a handful of moments per process. At exit
everything is unfrozen again, so the interpreter's last collection tears it down in order
(extension modules such as nanobind's report frozen objects as leaks otherwise).
"""
from __future__ import annotations

import atexit
import gc
import sys
import threading

_lock = threading.Lock()
_modules_frozen = 0


def freeze_long_lived() -> None:
    """Everything alive now is left out of later collections (cheap: it moves one list)."""
    global _modules_frozen
    with _lock:
        if not _modules_frozen:
            atexit.register(gc.unfreeze)
        gc.freeze()
        _modules_frozen = len(sys.modules)


def freeze_if_imported() -> None:
    """Freeze again if modules were imported since the last freeze (a first model or detector)."""
    if len(sys.modules) > _modules_frozen:
        freeze_long_lived()
