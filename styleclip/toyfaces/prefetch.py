"""Renders training batches ahead of the training loop in worker processes, in step order.

Each trainer's batch is a pure function of (seed, step), so farming steps out to processes keeps runs
reproducible: the same batches arrive in the same order whatever the number of workers. With `workers=0`
batches are made inline (the CPU default, where a second process would only compete for the same cores).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import torch


def _init_worker() -> None:
    # Renders are numpy + PIL; one torch thread per worker keeps workers from oversubscribing the cores.
    torch.set_num_threads(1)


def batches(make_batch: Callable[[int], Any], start_step: int, workers: int = 0,
            ahead_per_worker: int = 2) -> Iterator[Any]:
    """Yields make_batch(start_step), make_batch(start_step + 1), ... forever.

    The worker processes start here, not at the first batch: call this before the trainer touches CUDA, so the
    forked workers never inherit an initialised CUDA context.

    Args:
        make_batch: a picklable callable step -> batch (e.g. functools.partial of a module-level function).
        start_step: the first step.
        workers: processes rendering ahead; 0 renders inline.
        ahead_per_worker: queued steps per worker (bounds memory: a batch can be tens of MB).
    """
    if workers <= 0:
        return (make_batch(step) for step in itertools.count(start_step))
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_init_worker)
    steps = itertools.count(start_step)
    pending = collections.deque(pool.submit(make_batch, next(steps)) for _ in range(workers * ahead_per_worker))

    def stream() -> Iterator[Any]:
        try:
            while True:
                batch = pending.popleft().result()
                pending.append(pool.submit(make_batch, next(steps)))
                yield batch
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    return stream()
