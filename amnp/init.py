"""Parameter initialisation, drawn on the host and then put on the current backend.

Drawing with a NumPy generator on the host means the same seed gives the same
network on NumPy and on CuPy, which is what backend-parity tests rely on.

Schemes (as in the SphereFace/AM-Softmax Caffe models, docs/derivations.md#sphereface-network):
- ``"xavier"``: Caffe's xavier filler, uniform on [−a, a] with a = sqrt(3 / fan_in),
  so each output starts with about the variance of one input;
- a float ``std``: zero-mean Gaussian with that standard deviation (the reference uses
  0.01 for the convolutions inside residual units);
- biases start at zero, PReLU slopes at 0.25.

Every other random stream of a run is drawn from the run's seed and a tag of its own
(``stream_seed``), so that no two streams meet.
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

from .backend import asarray


def make_rng(rng=None) -> np.random.Generator:
    """A NumPy Generator from None (fresh entropy), an int seed, or a Generator (used as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# The tags must differ by themselves, whatever follows them: NumPy's SeedSequence ignores
# trailing zeros, so [seed, 6, 0, 0] (a stream's rank 0 at step 0) is the stream [seed, 6].
STREAM_TAGS = {
    "epoch order": 1,           # amnp.training: the permutation of each epoch
    "mirror flips": 2,          # amnp.training: which images of a step are flipped
    "gallery": 3,               # amnp.inference: the closed-set gallery and probes
    "open set": 4,              # amnp.inference: the open-set protocol
    "sphere features": 5,       # amnp.compare: the batches of the feature picture
    "held-out bootstrap": 6,    # amnp.statistics: resamples of the held-out metrics
    "all-pairs bootstrap": 7,   # amnp.statistics: resamples of the all-pairs metrics
    "class sampling": 8,        # amnp.training: a sharded head's sampled classes
}


def stream_seed(seed: int, stream: str, *more: int) -> list:
    """The seed of ``stream`` (a key of STREAM_TAGS) for a run seeded ``seed``, [seed, tag,
    *more]; ``more`` tells draws of one stream apart (the epoch, the step, the rank)."""
    return [seed, STREAM_TAGS[stream], *more]


def check_dtype(dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


# Values drawn at a time when only some rows of a weight are kept (``weight(rows=...)``):
# 8 MiB of float64, a small part of a weight worth sharding (MS1M's head: 335 MiB in float64).
ROW_BLOCK_VALUES = 1 << 20


def weight(shape, fan_in: int, scheme, dtype, rng: np.random.Generator, where: str, rows=None):
    """A weight array of ``shape`` drawn by ``scheme`` ("xavier" or a float std).

    ``rows=(start, stop)``: only those rows (first axis) of the weight, exactly as the whole
    draw gives them, shape (stop − start, *shape[1:]).  The whole weight's values are drawn in
    blocks of rows (about ROW_BLOCK_VALUES values each: a generator draws the same values in
    pieces as at once) and only the rows asked for are kept, so no more than one block and
    those rows are held at a time, and ``rng`` ends where the whole draw leaves it.
    """
    draw = _sampler(scheme, fan_in, rng, where)
    if rows is None:
        return asarray(draw(size=shape), dtype=dtype)
    start, stop = rows
    if not 0 <= start <= stop <= shape[0]:
        raise ValueError(f"{where}: rows [{start}, {stop}) are not rows of a weight of shape {tuple(shape)}")
    row_shape = tuple(shape[1:])
    kept = np.empty((stop - start,) + row_shape, dtype=dtype)
    block = max(1, ROW_BLOCK_VALUES // max(1, int(np.prod(row_shape))))
    for first in range(0, shape[0], block):
        last = min(first + block, shape[0])
        values = draw(size=(last - first,) + row_shape)
        low, high = max(first, start), min(last, stop)
        if low < high:
            kept[low - start:high - start] = values[low - first:high - first]
        del values  # before the next block is drawn: one block at a time
    return asarray(kept)


def _sampler(scheme, fan_in: int, rng: np.random.Generator, where: str):
    """The function ``size -> float64 values`` of ``scheme`` on ``rng``."""
    if scheme == "xavier":
        bound = np.sqrt(3.0 / fan_in)
        return functools.partial(rng.uniform, -bound, bound)
    if isinstance(scheme, numbers.Real) and not isinstance(scheme, bool) and scheme > 0:
        return functools.partial(rng.normal, 0.0, float(scheme))
    raise ValueError(f"{where}: weight_init must be 'xavier' or a positive std, got {scheme!r}")


def constant(shape, value: float, dtype):
    return asarray(np.full(shape, value), dtype=dtype)
