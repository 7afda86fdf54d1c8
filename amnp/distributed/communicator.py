"""The communicator seam: the few collectives that data parallelism and a class-sharded head
need, behind one interface with interchangeable implementations.

    comm.rank, comm.size, comm.local_rank     # this process, the world, its rank on its node
    comm.processes_on_node                    # the job's processes on this node: they share its cores
    comm.all_reduce(x, op="sum")              # in place, "sum" or "max"; returns x
    comm.all_gather(x, sizes)                 # every rank's rows, in rank order
    comm.reduce_scatter(x, sizes)             # the sum over ranks, each rank keeping its rows
    comm.broadcast(x, root=0)                 # in place; returns x
    comm.barrier()
    comm.all_gather_sizes(n)                  # host ints: every rank's row count
    comm.broadcast_object(obj, root=0)        # a host Python object (bootstrapping)

``sizes`` lists each rank's number of rows, so ranks may hold different numbers of rows (the
last batch of an epoch, an uneven class split); the uneven case is padded to equal blocks
here, once, for every implementation, because NCCL's all-gather and reduce-scatter move equal
blocks only.  The implementations provide the equal-block primitives:

- :class:`SingleProcess`: rank 0 of 1, every collective a no-op;
- :class:`SimulatedCommunicator`: several ranks as threads of one process
  (:func:`run_simulated`), on any array module, for tests and for students without MPI;
- :class:`MPICommunicator`: mpi4py's buffer methods on NumPy arrays (``amnp.distributed.mpi``);
- :class:`~amnp.distributed.nccl.NCCLCommunicator`: CuPy device arrays (``amnp.distributed.nccl``).

:func:`communicator_for` chooses among them for a backend.

Nothing here imports mpi4py or CuPy at import time.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from ..backend import BACKENDS, get_array_module

OPS = ("sum", "max")


class Communicator:
    """The interface, and the uneven-size logic every implementation shares.

    Arrays must be C-contiguous (the collectives work on their memory); an all-reduce or a
    broadcast changes its argument in place, so that gradient buffers are reduced where they lie.
    """

    rank: int
    size: int
    local_rank: int
    # the job's processes on this machine, this one included, which share its cores; 1 unless an
    # implementation knows better (simulated ranks are threads of one process)
    processes_on_node: int = 1

    # --- what an implementation provides: equal blocks, host ints, host objects
    def _all_reduce(self, buffer, op: str) -> None:
        raise NotImplementedError

    def _all_gather(self, send, receive) -> None:
        """receive (size·k, ...) ← every rank's send (k, ...), in rank order."""
        raise NotImplementedError

    def _reduce_scatter(self, send, receive) -> None:
        """receive (k, ...) ← block ``rank`` of the sum over ranks of send (size·k, ...)."""
        raise NotImplementedError

    def _broadcast(self, buffer, root: int) -> None:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def all_gather_sizes(self, n: int) -> list[int]:
        """Every rank's ``n`` (a host int), in rank order."""
        raise NotImplementedError

    def broadcast_object(self, value, root: int = 0):
        """Root's ``value`` (a picklable host object) on every rank."""
        raise NotImplementedError

    # --- the interface
    def all_reduce(self, x, op: str = "sum"):
        """Replace ``x`` on every rank by the element-wise sum (or max) over ranks; returns x."""
        if op not in OPS:
            raise ValueError(f"{self._name}: all_reduce op must be one of {', '.join(OPS)}, got {op!r}")
        self._check_buffer(x, "all_reduce")
        if self.size > 1:
            self._all_reduce(x, op)
        return x

    def broadcast(self, x, root: int = 0):
        """Replace ``x`` on every rank by root's ``x``; returns x."""
        self._check_root(root)
        self._check_buffer(x, "broadcast")
        if self.size > 1:
            self._broadcast(x, root)
        return x

    def all_gather(self, x, sizes: Sequence[int]):
        """x: (sizes[rank], ...) on each rank -> (sum(sizes), ...): every rank's rows, in rank
        order, on every rank.  With one rank it returns x itself."""
        self._check_sizes(x, sizes, "all_gather")
        if self.size == 1:
            return x
        xp = get_array_module(x)
        block = max(sizes)
        receive = xp.empty((self.size * block,) + tuple(x.shape[1:]), dtype=x.dtype)
        if all(n == block for n in sizes):
            self._all_gather(x, receive)
            return receive
        send = xp.zeros((block,) + tuple(x.shape[1:]), dtype=x.dtype)
        send[:sizes[self.rank]] = x
        self._all_gather(send, receive)
        return xp.concatenate([receive[r * block:r * block + n] for r, n in enumerate(sizes)])

    def reduce_scatter(self, x, sizes: Sequence[int]):
        """x: (sum(sizes), ...) on each rank -> (sizes[rank], ...): this rank's rows of the sum
        of x over ranks.  With one rank it returns x itself."""
        self._check_sizes(x, sizes, "reduce_scatter")
        if self.size == 1:
            return x
        xp = get_array_module(x)
        block = max(sizes)
        receive = xp.empty((block,) + tuple(x.shape[1:]), dtype=x.dtype)
        if all(n == block for n in sizes):
            self._reduce_scatter(x, receive)
            return receive
        send = xp.zeros((self.size * block,) + tuple(x.shape[1:]), dtype=x.dtype)
        start = 0
        for r, n in enumerate(sizes):
            send[r * block:r * block + n] = x[start:start + n]
            start += n
        self._reduce_scatter(send, receive)
        return receive[:sizes[self.rank]]

    # --- checks
    @property
    def _name(self) -> str:
        return type(self).__name__

    def _check_buffer(self, x, what) -> None:
        if not hasattr(x, "dtype") or not hasattr(x, "flags"):
            raise TypeError(f"{self._name}: {what} needs an array, got {type(x).__name__}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{self._name}: {what} works on an array's memory in place, so the array "
                             "must be C-contiguous (make it with xp.ascontiguousarray)")

    def _check_root(self, root) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"{self._name}: root must be a rank in [0, {self.size - 1}], got {root}")

    def _check_sizes(self, x, sizes, what) -> None:
        """``sizes``: one row count per rank; x holds this rank's rows (all_gather) or the
        rows of every rank (reduce_scatter)."""
        self._check_buffer(x, what)
        if len(sizes) != self.size or any(int(n) != n or n < 0 for n in sizes):
            raise ValueError(f"{self._name}: {what} needs one row count >= 0 per rank ({self.size}), "
                             f"got {list(sizes)}")
        rows = sizes[self.rank] if what == "all_gather" else sum(sizes)
        if x.ndim < 1 or x.shape[0] != rows:
            raise ValueError(f"{self._name}: {what} on rank {self.rank} expects {rows} rows for sizes "
                             f"{list(sizes)}, got shape {tuple(x.shape)}")

    def __repr__(self):
        return f"{self._name}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process: rank 0 of 1; every collective leaves its arguments as they are."""

    rank, size, local_rank = 0, 1, 0

    def barrier(self) -> None:
        pass

    def all_gather_sizes(self, n: int) -> list[int]:
        return [int(n)]

    def broadcast_object(self, value, root: int = 0):
        self._check_root(root)
        return value


class SimulatedWorld:
    """The state that the ranks of one simulated world share: a barrier and one slot per rank."""

    def __init__(self, size: int, timeout: float = 60.0):
        if int(size) != size or size < 1:
            raise ValueError(f"SimulatedWorld: size must be a positive integer, got {size!r}")
        self.size = int(size)
        self.barrier = threading.Barrier(self.size, timeout=timeout)
        self.slots = [None] * self.size

    def communicators(self) -> list["SimulatedCommunicator"]:
        return [SimulatedCommunicator(self, rank) for rank in range(self.size)]


class SimulatedCommunicator(Communicator):
    """One rank of a :class:`SimulatedWorld`: ranks are threads of one process, and a
    collective is "put my array in my slot, wait for everyone, combine all slots, wait again".

    Every rank combines the slots in rank order, so all ranks get bit-identical results, as
    the same reduction order gives on MPI.  Works on any array module (NumPy, CuPy, the
    tests' host-transfer guard), and moves nothing to the host.
    """

    def __init__(self, world: SimulatedWorld, rank: int):
        self.world, self.rank, self.size = world, int(rank), world.size
        self.local_rank = self.rank

    def _exchange(self, value, combine: Callable):
        """combine(every rank's value, in rank order), computed on every rank.  The second wait
        keeps each rank's value alive and unchanged until every rank has combined."""
        world = self.world
        world.slots[self.rank] = value
        world.barrier.wait()
        result = combine(list(world.slots))
        world.barrier.wait()
        return result

    def _all_reduce(self, buffer, op):
        xp = get_array_module(buffer)

        def reduce(values):
            total = values[0].copy()
            for value in values[1:]:
                if op == "sum":
                    total += value
                else:
                    total = xp.maximum(total, value)
            return total

        buffer[...] = self._exchange(buffer, reduce)

    def _all_gather(self, send, receive):
        receive[...] = self._exchange(send, lambda values: get_array_module(send).concatenate(values))

    def _reduce_scatter(self, send, receive):
        block = receive.shape[0]
        mine = slice(self.rank * block, (self.rank + 1) * block)

        def reduce(values):
            total = values[0][mine].copy()
            for value in values[1:]:
                total += value[mine]
            return total

        receive[...] = self._exchange(send, reduce)

    def _broadcast(self, buffer, root):
        buffer[...] = self._exchange(buffer, lambda values: values[root].copy())

    def barrier(self) -> None:
        self._exchange(None, lambda values: None)

    def all_gather_sizes(self, n: int) -> list[int]:
        return self._exchange(int(n), list)

    def broadcast_object(self, value, root: int = 0):
        self._check_root(root)
        return self._exchange(value, lambda values: values[root])


def run_simulated(size: int, function: Callable, timeout: float = 60.0) -> list:
    """Run ``function(comm)`` on ``size`` simulated ranks (threads) and return each rank's
    result, in rank order.

    An exception on any rank breaks the world's barrier, so the other ranks stop instead of
    waiting forever, and the first rank's exception (by rank) is raised here, as an MPI job
    ends when one of its processes fails.  A rank waits at most ``timeout`` seconds in one
    collective (a rank that skipped a collective would otherwise hang the others).
    """
    world = SimulatedWorld(size, timeout)
    results, errors = [None] * world.size, [None] * world.size

    def run(comm):
        try:
            results[comm.rank] = function(comm)
        except BaseException as exc:  # noqa: BLE001 -- re-raised below, in the caller's thread
            errors[comm.rank] = exc
            world.barrier.abort()

    threads = [threading.Thread(target=run, args=(comm,), name=f"rank {comm.rank}")
               for comm in world.communicators()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A rank that failed first is the cause; the others only saw the broken barrier.
    causes = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if causes or any(errors):
        raise (causes or [e for e in errors if e is not None])[0]
    return results


def communicator_for(backend: str, bootstrap: Communicator) -> Communicator:
    """The communicator that moves ``backend``'s arrays between the processes of ``bootstrap``:
    the one place where amnp chooses it (``amnp train --distributed`` asks here).

    - an MPI job (an MPICommunicator) on ``"cupy"``: an NCCLCommunicator bootstrapped through
      it, one GPU per rank (MPI moves host memory only: a CUDA-aware MPI is not assumed);
    - otherwise ``bootstrap`` itself: MPI on ``"numpy"``, and the communicators whose
      collectives take any array module (one process, simulated ranks) on either backend.

    Raises ValueError for an unknown backend, and the NCCL communicator's RuntimeError where
    CuPy, NCCL or a GPU per rank is missing.
    """
    from .mpi import MPICommunicator  # a module that imports mpi4py only when a communicator is made

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "cupy" and isinstance(bootstrap, MPICommunicator):
        from .nccl import NCCLCommunicator

        return NCCLCommunicator(bootstrap)
    return bootstrap
