"""Micro-batched `predict`: concurrent calls on one model version gathered into one forward pass.

The fast path (clserver/serving/predict_fast.py) tells the batcher when a call is on its way
(`expect`: its lookup and input parsing run on the pool) and then either hands it its inputs
(`join`) or lets it go (`leave`: handed to Django, or answered alone). Calls that join under the
same key (deployment, champion version, weights file, row shape) wait together for at most the
window and run as one `run(inputs)` on the pool; each gets its own result back. The key holds the
version each call's own lookup found, so a promotion or rollback between two calls puts them in
different batches: no batch ever mixes versions, and every answer names the version that made it.

A batch runs as soon as no other call is on its way (nobody left to wait for), when its rows reach
the cap, or when the window ends, whichever comes first; a call that finds itself alone runs at
once on the pool without joining (`alone`), so a lone client never waits.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

logger = logging.getLogger(__name__)

# Rows gathered into one forward pass at most (model_predict feeds the model 1024 rows at a time).
MAX_BATCH_ROWS = 1024

Run = Callable[[list[np.ndarray]], list[Any]]


def one_compute_thread() -> None:
    """Pool initializer: torch computes each forward pass on the calling thread alone.

    Concurrency comes from the pool and from batching. Left to torch, a gathered batch of 8 rows or
    more is split over OpenMP threads, which on a busy 2-core machine took 0.3 to 2 ms where one
    thread took 0.04 to 0.06 ms (simple_mlp, 8 to 32 rows); a single row never split. OpenMP's thread
    count is per calling thread, so the web process's other torch work (drift checks) keeps torch's.
    """
    try:
        import torch  # noqa: F401  (loads the OpenMP runtime threadpoolctl then finds)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="openmp")
    except Exception:  # a pool whose initializer fails is broken for good: serve with torch's threads instead
        logger.warning("predict pool: could not limit torch to one thread per forward pass", exc_info=True)


def predict_many(model: Any, xs: list[np.ndarray], *, version: int) -> list[np.ndarray]:
    """Each input's class predictions from ONE `model_predict` over all of them, split back in order."""
    from clserver.serving.cache import model_predict

    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    predictions = model_predict(model, x)
    logger.debug("predict forward pass: version=%s calls=%d rows=%d", version, len(xs), len(x))
    if len(xs) == 1:
        return [predictions]
    return np.split(predictions, np.cumsum([len(part) for part in xs[:-1]]))


@dataclass
class _Batch:
    run: Run
    inputs: list[np.ndarray] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


class PredictBatcher:
    """Gathers calls by key on one event loop; every method but `alone` runs on that loop."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, executor: Executor, window_s: float,
                 max_rows: int = MAX_BATCH_ROWS) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive (0 turns batching off before a batcher is made); "
                             f"got {window_s}.")
        self.loop, self.executor, self.window_s, self.max_rows = loop, executor, window_s, max_rows
        self.expected = 0  # calls on their way: expected, not yet joined or gone
        self.open: dict[Hashable, _Batch] = {}

    def expect(self) -> None:
        self.expected += 1

    def alone(self) -> bool:
        """Whether the calling call is the only one on its way and nothing waits (read from the pool:
        a stale answer only means one more batch of one, or one call that waits for the window)."""
        return self.expected == 1 and not self.open

    def leave(self) -> None:
        """An expected call will not join (handed to Django, or answered alone)."""
        self.expected -= 1
        if self.expected == 0:
            self._flush_all()

    def join(self, key: Hashable, x: np.ndarray, run: Run) -> asyncio.Future:
        """An expected call's inputs; the future gets `run`'s result for them (or its exception).
        `run` is the first caller's: calls under one key run the same model."""
        self.expected -= 1
        batch = self.open.get(key)
        if batch is not None and batch.rows + len(x) > self.max_rows:
            self._flush(key, batch)
            batch = None
        if batch is None:
            batch = self.open[key] = _Batch(run=run)
            batch.timer = self.loop.call_later(self.window_s, self._flush, key, batch)
        waiter = self.loop.create_future()
        batch.inputs.append(x)
        batch.waiters.append(waiter)
        batch.rows += len(x)
        if batch.rows >= self.max_rows:
            self._flush(key, batch)
        if self.expected == 0:
            self._flush_all()
        return waiter

    # --- running a batch ---------------------------------------------------------------------------
    def _flush_all(self) -> None:
        for key, batch in list(self.open.items()):
            self._flush(key, batch)

    def _flush(self, key: Hashable, batch: _Batch) -> None:
        if self.open.get(key) is not batch:
            return  # already running (the timer of a batch flushed early)
        del self.open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        done = self.loop.run_in_executor(self.executor, batch.run, batch.inputs)
        done.add_done_callback(lambda future: self._deliver(batch, future))

    @staticmethod
    def _deliver(batch: _Batch, future: asyncio.Future) -> None:
        error = (RuntimeError("the batch's forward pass was cancelled") if future.cancelled()
                 else future.exception())
        if error is None:
            results = future.result()
            if len(results) != len(batch.waiters):
                error = RuntimeError(f"a batch of {len(batch.waiters)} calls got {len(results)} results")
        for i, waiter in enumerate(batch.waiters):
            if waiter.done():  # its caller went away
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(results[i])
