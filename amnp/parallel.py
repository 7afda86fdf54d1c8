"""Data parallel over the threads of one process: each step's batch is split into P
contiguous parts, and P threads run the network and head forward and backward, one part
each, on P replicas of the model that share its parameters.

Why: NumPy runs each elementwise pass, copy, padding and window gather on one thread; only
its matrix products use the BLAS library's threads.  On the 2-core development machine a
`small` step at batch 128 took 79 ms with one BLAS thread and 69 ms with two: most of the
step leaves the second core idle.  Two halves of the batch on two threads, each with one
BLAS thread, put it to work between the products too, as far as Python's global lock allows:
NumPy lets go of it inside each pass and product, and takes it back after (see the end).

The maths is that of the distributed trainer (amnp.training): the loss is the mean over the
whole batch of N images, so part r, of n_r images, contributes its share n_r / N of the
gradient (``backward(n_r / N)``).  The parts' gradients are summed into the model's own in
replica order, a fixed order, so a run is reproducible and resumes bit for bit on the same
number of threads; against one thread the step differs by float rounding only (the batch's
sums run in another order).  The optimizer then updates the model once.

A replica is a deep copy of the model: its layers hold their own caches and gradients.  Its
parameters are the model's own arrays, pointed to again before every step, because loading
a checkpoint or a state dict puts new arrays in the model's ``params``.

The embedding pass (amnp.inference.embed) splits its batches with the same ``BatchThreads``,
without replicas: in inference mode no layer keeps anything, so the threads share one network.

Threads of one process scale worse than processes would: on arrays of a few hundred kilobytes
two threads spend much of their time handing the global lock over, so the gain varies with the
network and the machine (docs/performance.md has the measurements).

Processes (the ranks of ``amnp train --distributed`` under ``mpiexec``) have no lock to share,
but each one's BLAS library starts as many threads as the machine has cores, so P processes on
one machine would ask for P times its cores.  ``blas_threads_per_process`` divides the cores
among them, and the trainer runs its loop within ``blas_threads`` of that count; a count the
user set in the environment (``OPENBLAS_NUM_THREADS`` and the like) stands.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
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


# read by the BLAS libraries NumPy may use when they load: a count set there is the user's choice
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                         "BLIS_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def blas_threads_per_process(processes: int, cores: int | None = None) -> int | None:
    """The BLAS threads each of ``processes`` processes on one machine should run so that
    together they use its cores once: ⌊cores / processes⌋, at least 1 (``cores``: by default
    :func:`available_cores`).  None, leaving the BLAS library's own count, when one process has
    the machine or when a count was set in the environment (BLAS_THREAD_VARIABLES; an empty
    value counts as unset).  A launcher that binds each process to its own cores already
    narrowed them: set a count in the environment there.  Measured: docs/performance.md
    ("Several processes on one machine")."""
    processes = positive_int(processes, "processes", "sharing the cores")
    if processes == 1 or any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES):
        return None
    return max(1, (available_cores() if cores is None else cores) // processes)


@contextlib.contextmanager
def blas_threads(count: int | None):
    """Within the block the BLAS library runs ``count`` threads per product (None: its own
    count, unchanged); the count is put back at the end.  The count is one setting of the
    process, and threadpoolctl may let only one thread change it: enter this block and
    :func:`one_blas_thread` on the same thread (the trainer's loop is the thread that splits
    the batch)."""
    if count is None:
        yield
        return
    with _blas_libraries().limit(limits=count, user_api="blas"):
        yield


@contextlib.contextmanager
def one_blas_thread():
    """Within the block, the BLAS library runs each product on the calling thread alone, as
    threads that each multiply their own part need (two threads each asking the library for
    two would ask four of two cores); the count is put back at the end.  It is one setting
    for the whole process, so blocks in several threads (simulated ranks, each splitting its
    batch) take turns."""
    with _blas_turn, blas_threads(1):
        yield


class BatchThreads:
    """A pool of ``threads`` threads that runs a function on the contiguous parts of a batch,
    one part per thread: ``map(function, *arrays)`` calls ``function(r, *parts_r)`` for every
    part r, the first in the calling thread, and returns the results in part order.  The parts
    are as equal as the rows allow, the larger ones last; a batch of fewer rows than threads
    has one part per row.  ``threads=1``: one call on the whole batch, in the calling thread,
    with the BLAS library's own threads.  Otherwise the calls run within ``one_blas_thread``,
    and an error in any part is raised (the first part's first) once every part has finished.
    Thread-local settings (``inference_mode``, ``value_checks``) are the calling thread's:
    ``function`` sets those its part needs."""

    def __init__(self, threads: int):
        self.threads = positive_int(threads, "threads", "splitting the batch")
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="amnp part") if self.threads > 1 else None

    def check_arrays(self, *arrays) -> None:
        """Refuse to split arrays that are not NumPy's over several threads."""
        if self.threads > 1 and get_array_module(*arrays) is not np:
            raise ValueError(f"threads={self.threads} splits the batch over the CPU's cores, for NumPy arrays; "
                             "on cupy the GPU runs the whole batch: use one thread")

    def map(self, function: Callable, *arrays) -> list:
        n = len(arrays[0])
        parts = min(self.threads, n)
        if parts <= 1:
            return [function(0, *arrays)]
        self.check_arrays(*arrays)
        bounds = [n * r // parts for r in range(parts + 1)]
        rows = [slice(bounds[r], bounds[r + 1]) for r in range(parts)]
        with one_blas_thread():
            futures = [self._pool.submit(function, r, *(a[rows[r]] for a in arrays)) for r in range(1, parts)]
            try:
                first = function(0, *(a[rows[0]] for a in arrays))
            finally:
                for future in futures:  # every part finished before anything is raised
                    future.exception()
        return [first] + [future.result() for future in futures]


class ThreadReplicas:
    """``threads`` replicas of ``model`` (a TrainingModel, or any Layer), the first being the
    model itself, and the threads to run them (``BatchThreads``).

    ``run(part, x, labels)`` calls ``part(replica, x_r, labels_r)`` for every part r of the
    batch, each in its own thread, and sums the replicas' gradients into the model's; see the
    module docstring.
    """

    def __init__(self, model: Layer, threads: int):
        self.split, self.model = BatchThreads(threads), model
        self.split.check_arrays(*self._parameters(model))
        shared = {id(p): p for p in self._parameters(model)}  # deepcopy's memo: these stay the same arrays
        self.replicas = [model] + [copy.deepcopy(model, dict(shared)) for _ in range(self.threads - 1)]

    @property
    def threads(self) -> int:
        return self.split.threads

    @staticmethod
    def _parameters(model: Layer) -> list:
        return [owner.params[key] for _, owner, key in model.named_parameters()]

    def run(self, part: Callable, x, labels) -> list:
        """``part(replica, x[rows], labels[rows])`` for each part, then the replicas' gradients
        summed into the model's.  Returns each part's result, in part order."""
        for replica in self.replicas[1:]:
            self._share_parameters(replica)
        results = self.split.map(lambda r, x_part, labels_part: part(self.replicas[r], x_part, labels_part),
                                 x, labels)
        self._sum_gradients(self.replicas[1:len(results)])
        return results

    def _share_parameters(self, replica: Layer) -> None:
        for (_, mine, key), (_, theirs, _) in zip(self.model.named_parameters(), replica.named_parameters()):
            theirs.params[key] = mine.params[key]

    def _sum_gradients(self, others) -> None:
        """Each model gradient += the gradients of ``others``, in replica order."""
        others = [list(replica.named_parameters()) for replica in others]
        for position, (_, owner, key) in enumerate(self.model.named_parameters()):
            total = owner.grads[key]
            for named in others:
                _, theirs, their_key = named[position]
                total += theirs.grads[their_key]
