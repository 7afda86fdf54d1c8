"""Exact data parallelism's one collective: the gradients summed over ranks, through one buffer."""
from __future__ import annotations

from typing import Sequence

from ..backend import get_array_module
from .communicator import Communicator


def all_reduce_gradients(comm: Communicator, gradients: Sequence) -> None:
    """Replace every array of ``gradients`` by its sum over the ranks of ``comm``, in place.

    The arrays are packed into one flat buffer and reduced by a single all-reduce: one
    collective's latency instead of one per parameter (a SphereFace-20 has 70 arrays).
    They must share one dtype and one array module.

    Sum, not mean, and here is why: when each rank's loss is the mean over the *global* batch
    (its local sum divided by the global N, as the sharded head computes it, and as a data
    parallel loss should, so that uneven local batches weigh each sample alike), each rank's
    gradient is already its share of the global gradient, and the shares add up.  Averaging
    would divide the gradient by the number of ranks once more, silently shrinking the
    learning rate.  (Only with a per-rank *local* mean and equal local batches is the average
    the right reduction.)
    """
    gradients = list(gradients)
    if not gradients:
        return
    xp = get_array_module(*gradients)
    dtypes = {g.dtype for g in gradients}
    if len(dtypes) > 1:
        raise TypeError(f"all_reduce_gradients: the gradients must share one dtype to travel in one "
                        f"buffer, got {', '.join(sorted(str(d) for d in dtypes))}")
    if comm.size == 1:
        return
    flat = comm.all_reduce(xp.concatenate([g.reshape(-1) for g in gradients]))
    offset = 0
    for g in gradients:
        g[...] = flat[offset:offset + g.size].reshape(g.shape)
        offset += g.size
