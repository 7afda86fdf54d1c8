"""Data parallel over the threads of one process: each step's batch is split into P
contiguous parts, and P threads run the network and head forward and backward, one part
each, on P replicas of the model that share its parameters.

Why: NumPy runs each elementwise pass, copy, padding and window gather on one thread; only
its matrix products use the BLAS library's threads.  On the 2-core development machine a
`small` step at batch 128 took 79 ms with one BLAS thread and 69 ms with two: most of the
step leaves the second core idle.  Two halves of the batch on two threads, each with one
BLAS thread, keep both cores busy for the whole step (NumPy lets go of Python's global lock
inside its passes and products, so the threads run at once).

The maths is that of the distributed trainer (amnp.training): the loss is the mean over the
whole batch of N images, so part r, of n_r images, contributes its share n_r / N of the
gradient (``backward(n_r / N)``).  The parts' gradients are summed into the model's own in
replica order, a fixed order, so a run is reproducible and resumes bit for bit on the same
number of threads; against one thread the step differs by float rounding only (the batch's
sums run in another order).  The optimizer then updates the model once.

A replica is a deep copy of the model: its layers hold their own caches and gradients.  Its
parameters are the model's own arrays, pointed to again before every step, because loading
a checkpoint or a state dict puts new arrays in the model's ``params``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .backend import get_array_module
from .layers import Layer
from .validation import positive_int

_blas_turn = threading.Lock()


@functools.cache
def _blas_libraries():
    # imported here: amnp runs from a checkout with NumPy alone (benchmarks/gpu_check.py on a
    # lent GPU machine), where nothing splits a batch
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread():
    """Within the block, the BLAS library runs each product on the calling thread alone, as
    threads that each multiply their own part need (two threads each asking the library for
    two would ask four of two cores); the count is put back at the end.  It is one setting
    for the whole process, so blocks in several threads (simulated ranks, each splitting its
    batch) take turns."""
    with _blas_turn, _blas_libraries().limit(limits=1, user_api="blas"):
        yield


class ThreadReplicas:
    """``threads`` replicas of ``model`` (a TrainingModel, or any Layer), the first being the
    model itself, and a pool of threads to run them.  ``threads=1`` runs the one part in the
    calling thread, with the BLAS library's own threads, as a plain step does.

    ``run(part, x, labels)`` calls ``part(replica, x_r, labels_r)`` for every part r of the
    batch, each in its own thread, and sums the replicas' gradients into the model's; see the
    module docstring.
    """

    def __init__(self, model: Layer, threads: int):
        self.threads = positive_int(threads, "threads", "splitting the batch")
        self.model = model
        if self.threads > 1 and get_array_module(*self._parameters(model)) is not np:
            raise ValueError(f"threads={self.threads} splits the batch over the CPU's cores, for NumPy arrays; "
                             "on cupy the GPU runs the whole batch: use one thread")
        shared = {id(p): p for p in self._parameters(model)}  # deepcopy's memo: these stay the same arrays
        self.replicas = [model] + [copy.deepcopy(model, dict(shared)) for _ in range(self.threads - 1)]
        self._pool = (ThreadPoolExecutor(self.threads - 1, thread_name_prefix="amnp part")
                      if self.threads > 1 else None)

    @staticmethod
    def _parameters(model: Layer) -> list:
        return [owner.params[key] for _, owner, key in model.named_parameters()]

    def bounds(self, n: int) -> list[int]:
        """The first row of each part of a batch of ``n`` and ``n`` itself: parts as equal as
        rows allow, the larger ones last."""
        if n < self.threads:
            raise ValueError(f"a batch of {n} cannot be split over {self.threads} threads: "
                             f"use a batch of at least {self.threads}, or fewer threads")
        return [n * r // self.threads for r in range(self.threads + 1)]

    def run(self, part: Callable, x, labels) -> list:
        """``part(replica, x[rows], labels[rows])`` for each part, then the replicas' gradients
        summed into the model's.  Returns each part's result, in part order.  An error in any
        part is raised here (the first part's first), after every part has finished."""
        if self.threads == 1:
            return [part(self.model, x, labels)]
        for replica in self.replicas[1:]:
            self._share_parameters(replica)
        bounds = self.bounds(len(x))
        rows = [slice(bounds[r], bounds[r + 1]) for r in range(self.threads)]
        with one_blas_thread():
            futures = [self._pool.submit(part, replica, x[r], labels[r])
                       for replica, r in zip(self.replicas[1:], rows[1:])]
            try:
                first = part(self.model, x[rows[0]], labels[rows[0]])
            finally:
                for future in futures:  # every part done with its replica before anything is raised
                    future.exception()
        results = [first] + [future.result() for future in futures]
        self._sum_gradients()
        return results

    def _share_parameters(self, replica: Layer) -> None:
        for (_, mine, key), (_, theirs, _) in zip(self.model.named_parameters(), replica.named_parameters()):
            theirs.params[key] = mine.params[key]

    def _sum_gradients(self) -> None:
        """Each model gradient += the replicas' gradients, in replica order."""
        others = [list(replica.named_parameters()) for replica in self.replicas[1:]]
        for position, (_, owner, key) in enumerate(self.model.named_parameters()):
            total = owner.grads[key]
            for named in others:
                _, theirs, their_key = named[position]
                total += theirs.grads[their_key]
