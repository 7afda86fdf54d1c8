"""The NCCL communicator: collectives on CuPy device arrays, one GPU per rank.

    comm = NCCLCommunicator()                      # bootstrapped through MPI (amnp[dist])
    comm = NCCLCommunicator(SingleProcess())       # one rank, no MPI needed

The bootstrap communicator (MPI by default) does the host-side work: it tells each process
its rank, the world's size and its rank on its node, which picks the GPU (``local_rank``: the
k-th process of a node uses device k), carries NCCL's unique id from rank 0 to the others, and
answers ``all_gather_sizes``, ``broadcast_object`` and ``barrier``.  The collectives run on
``stream`` (by default the stream that is current when the communicator is made): each waits
for the work already queued on the caller's current stream and makes that stream wait for it,
so no call synchronises the host with the device.

Written against CuPy's ``cupy.cuda.nccl`` (``NcclCommunicator(ndev, commId, rank)``,
``allReduce(sendbuf, recvbuf, count, datatype, op, stream)``, ``allGather(sendbuf, recvbuf,
count, datatype, stream)`` with the per-rank count, ``reduceScatter(sendbuf, recvbuf,
recvcount, datatype, op, stream)``, ``broadcast(sendbuf, recvbuf, count, datatype, root,
stream)``, pointers as ints).  Only single-GPU machines were available to test it: the one-rank
communicator is tested on a GPU, several ranks on several GPUs are not.
"""
from __future__ import annotations

from .communicator import Communicator


class NCCLCommunicator(Communicator):
    def __init__(self, bootstrap: Communicator | None = None, stream=None):
        from ..backend import _import_cupy

        cupy = _import_cupy()
        try:
            from cupy.cuda import nccl
        except ImportError as exc:
            raise RuntimeError(f"the NCCL communicator needs CuPy built with NCCL ({exc})") from None
        if not getattr(nccl, "available", True):
            raise RuntimeError("the NCCL communicator needs NCCL, which this CuPy cannot load")
        if bootstrap is None:
            from .mpi import MPICommunicator
            bootstrap = MPICommunicator()
        self.bootstrap, self.cupy, self.nccl = bootstrap, cupy, nccl
        self.rank, self.size, self.local_rank = bootstrap.rank, bootstrap.size, bootstrap.local_rank
        self.processes_on_node = bootstrap.processes_on_node
        devices = cupy.cuda.runtime.getDeviceCount()
        if self.local_rank >= devices:
            raise RuntimeError(
                f"NCCLCommunicator: rank {self.rank} is process {self.local_rank + 1} on its node, "
                f"which has {devices} GPU(s); start at most one process per GPU")
        cupy.cuda.Device(self.local_rank).use()
        self.stream = cupy.cuda.get_current_stream() if stream is None else stream
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        self.comm = nccl.NcclCommunicator(self.size, bootstrap.broadcast_object(unique_id), self.rank)
        self._types = {
            "float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
            "int32": nccl.NCCL_INT32, "int64": nccl.NCCL_INT64, "uint8": nccl.NCCL_UINT8,
        }
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX}

    def _check_buffer(self, x, what) -> None:
        if not isinstance(x, self.cupy.ndarray):
            raise TypeError(f"NCCLCommunicator: {what} needs a CuPy array, got {type(x).__name__}")
        if x.dtype.name not in self._types:
            raise TypeError(f"NCCLCommunicator: {what} cannot send dtype {x.dtype}; it sends "
                            f"{', '.join(self._types)}")
        super()._check_buffer(x, what)

    def _on_stream(self, collective):
        """Run ``collective(stream pointer)`` on the communicator's stream, ordered after the
        work queued on the current stream and before whatever is queued there next."""
        current = self.cupy.cuda.get_current_stream()
        if current.ptr == self.stream.ptr:
            collective(self.stream.ptr)
            return
        self.stream.wait_event(current.record())
        collective(self.stream.ptr)
        current.wait_event(self.stream.record())

    def _all_reduce(self, buffer, op):
        self._on_stream(lambda stream: self.comm.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size, self._types[buffer.dtype.name],
            self._ops[op], stream))

    def _all_gather(self, send, receive):
        self._on_stream(lambda stream: self.comm.allGather(
            send.data.ptr, receive.data.ptr, send.size, self._types[send.dtype.name], stream))

    def _reduce_scatter(self, send, receive):
        self._on_stream(lambda stream: self.comm.reduceScatter(
            send.data.ptr, receive.data.ptr, receive.size, self._types[send.dtype.name],
            self._ops["sum"], stream))

    def _broadcast(self, buffer, root):
        self._on_stream(lambda stream: self.comm.broadcast(
            buffer.data.ptr, buffer.data.ptr, buffer.size, self._types[buffer.dtype.name], root, stream))

    def barrier(self) -> None:
        """Every rank has queued its collectives and its device has finished them."""
        self.stream.synchronize()
        self.bootstrap.barrier()

    def all_gather_sizes(self, n: int) -> list[int]:
        return self.bootstrap.all_gather_sizes(n)

    def broadcast_object(self, value, root: int = 0):
        return self.bootstrap.broadcast_object(value, root)
