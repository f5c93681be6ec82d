"""Serving a deployment in the web process: small LRU caches of loaded models and detectors.

Torch only (never Avalanche); alibi-detect is reached through clserver.drift.detectors, lazily.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np
from django.conf import settings

from claas_site.lazy import lazy_import
from clserver.serving.long_lived import freeze_if_imported
from modelfactory.architectures import architecture_build

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")

MODEL_CACHE_SIZE = 8
DETECTOR_CACHE_SIZE = 8
PREDICT_BATCH = 1024


class LruCache:
    """A thread-safe least-recently-used cache; `get` builds a missing entry with `load`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            freeze_if_imported()  # a first load imports torch or alibi-detect: long-lived objects
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            freeze_if_imported()

    def drop(self, match: Callable[[Hashable], bool]) -> None:
        with self._lock:
            for key in [k for k in self._items if match(k)]:
                del self._items[key]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items


MODELS = LruCache(MODEL_CACHE_SIZE)
DETECTORS = LruCache(DETECTOR_CACHE_SIZE)


def model_load(*, architecture: str, params: dict[str, Any], weights_file: str) -> nn.Module:
    """Build the architecture and load a state_dict written by this service."""
    model = architecture_build(architecture=architecture, params=params)
    state = torch.load(settings.DATA_DIR / weights_file, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def model_cached(*, deployment_key: tuple, version: int, architecture: str, params: dict[str, Any],
                 weights_file: str) -> nn.Module:
    """`deployment_key` = (id, creation time): a row id reused after a delete never hits old entries."""
    return MODELS.get((*deployment_key, version, weights_file),
                      lambda: model_load(architecture=architecture, params=params, weights_file=weights_file))


def model_predict(model: nn.Module, x: np.ndarray, batch: int = PREDICT_BATCH) -> np.ndarray:
    """Class predictions; a model that outputs NaN predicts class 0 (argmax of NaN), never crashes."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch])))
            out.append(torch.nan_to_num(logits, nan=-torch.inf).argmax(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return 0.0
    return float((model_predict(model, x) == y).mean())


def detector_cached(*, deployment_key: tuple, load: Callable[[], Any]) -> Any:
    return DETECTORS.get(deployment_key, load)


def detector_put(*, deployment_key: tuple, detector: Any) -> None:
    DETECTORS.put(deployment_key, detector)


def deployment_forget(deployment_key: tuple) -> None:
    """Drop a deleted deployment's cached models and detectors."""
    n = len(deployment_key)
    MODELS.drop(lambda key: key[:n] == deployment_key)
    DETECTORS.drop(lambda key: key[:n] == deployment_key)
