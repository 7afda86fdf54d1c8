"""The MPI communicator: mpi4py's buffer methods (upper-case, no pickling) on NumPy arrays.

Run under ``mpiexec -n K python -m mpi4py SCRIPT`` (``-m mpi4py`` makes an uncaught exception
on any rank abort the whole job instead of leaving the others waiting).  mpi4py and MPICH come
with the optional extra ``pip install "amnp[dist]"``; this module imports mpi4py only when a
communicator is made.
"""
from __future__ import annotations

import numpy as np

from .communicator import Communicator


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            f"the MPI communicator needs mpi4py, which could not be imported ({type(exc).__name__}: "
            f"{exc}); install it with 'pip install \"amnp[dist]\"' (mpi4py and MPICH)") from None
    return MPI


class MPICommunicator(Communicator):
    """MPI over host memory: ``MPICommunicator()`` uses MPI.COMM_WORLD, or pass an mpi4py
    communicator.  Device (CuPy) arrays are refused: a CUDA-aware MPI is not assumed, and an
    implicit copy to the host would hide a transfer per collective; use the NCCL communicator."""

    def __init__(self, comm=None):
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # the processes that share this node's memory (and GPUs): their ranks count from 0
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.processes_on_node = node.Get_rank(), node.Get_size()
        node.Free()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX}

    def _check_buffer(self, x, what) -> None:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"MPICommunicator: {what} sends host memory (NumPy arrays), got "
                            f"{type(x).__name__}; device arrays go through the NCCL communicator")
        super()._check_buffer(x, what)

    def _all_reduce(self, buffer, op):
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self._ops[op])

    def _all_gather(self, send, receive):
        self.comm.Allgather(send, receive)

    def _reduce_scatter(self, send, receive):
        self.comm.Reduce_scatter_block(send, receive, op=self.MPI.SUM)

    def _broadcast(self, buffer, root):
        self.comm.Bcast(buffer, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        """End every process of the job at once, mpiexec exiting with ``code`` (MPI_Abort):
        a rank that leaves alone would leave the others waiting in their next collective."""
        self.comm.Abort(code)

    def all_gather_sizes(self, n: int) -> list[int]:
        return [int(v) for v in self.comm.allgather(int(n))]

    def broadcast_object(self, value, root: int = 0):
        self._check_root(root)
        return self.comm.bcast(value, root=root)
