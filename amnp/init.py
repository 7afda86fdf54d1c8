"""Parameter initialisation, drawn on the host and then put on the current backend.

Drawing with a NumPy generator on the host means the same seed gives the same
network on NumPy and on CuPy, which is what backend-parity tests rely on.

Schemes (as in the SphereFace/AM-Softmax Caffe models, docs/derivations.md#sphereface-network):
- ``"xavier"``: Caffe's xavier filler, uniform on [−a, a] with a = sqrt(3 / fan_in),
  so each output starts with about the variance of one input;
- a float ``std``: zero-mean Gaussian with that standard deviation (the reference uses
  0.01 for the convolutions inside residual units);
- biases start at zero, PReLU slopes at 0.25.
"""
from __future__ import annotations

import numbers

import numpy as np

from .backend import asarray


def make_rng(rng=None) -> np.random.Generator:
    """A NumPy Generator from None (fresh entropy), an int seed, or a Generator (used as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def check_dtype(dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype}")
    return dtype


def weight(shape, fan_in: int, scheme, dtype, rng: np.random.Generator, where: str):
    """A weight array of ``shape`` drawn by ``scheme`` ("xavier" or a float std)."""
    if scheme == "xavier":
        bound = np.sqrt(3.0 / fan_in)
        values = rng.uniform(-bound, bound, size=shape)
    elif isinstance(scheme, numbers.Real) and not isinstance(scheme, bool) and scheme > 0:
        values = rng.normal(0.0, float(scheme), size=shape)
    else:
        raise ValueError(f"{where}: weight_init must be 'xavier' or a positive std, got {scheme!r}")
    return asarray(values, dtype=dtype)


def constant(shape, value: float, dtype):
    return asarray(np.full(shape, value), dtype=dtype)
