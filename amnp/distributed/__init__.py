"""Training on several processes: a communicator seam, exact data parallelism's gradient
all-reduce, and a class-sharded margin head (docs/distributed.md).

    from amnp.distributed import SingleProcess, run_simulated, all_reduce_gradients, build_sharded_head
    from amnp.distributed.mpi import MPICommunicator       # mpi4py: pip install "amnp[dist]"
    from amnp.distributed.nccl import NCCLCommunicator     # CuPy with NCCL, one GPU per rank

Importing this package imports neither mpi4py nor CuPy; the communicators that need them
import them when made.  ``amnp train --distributed`` trains with them (amnp.training), on the
communicator that ``communicator_for`` chooses for the backend: MPI on NumPy, NCCL on CuPy.
"""
from .communicator import (Communicator, SimulatedCommunicator, SimulatedWorld, SingleProcess, communicator_for,
                           run_simulated)
from .gradients import all_reduce_gradients
from .sharded_head import ClassShard, ShardedMarginHead, build_sharded_head, class_range

__all__ = [
    "Communicator", "SingleProcess", "SimulatedWorld", "SimulatedCommunicator", "run_simulated", "communicator_for",
    "all_reduce_gradients", "ShardedMarginHead", "ClassShard", "build_sharded_head", "class_range",
]
