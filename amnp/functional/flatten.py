"""Flatten every axis but the batch axis."""
from __future__ import annotations

from typing import NamedTuple


class FlattenCache(NamedTuple):
    x_shape: tuple


def flatten_forward(x):
    """x: (N, d1, d2, ...) -> out: (N, d1·d2·...) (a view when x is contiguous)."""
    if not hasattr(x, "ndim") or x.ndim < 1:
        raise ValueError(f"flatten: input must have a batch axis, got {getattr(x, 'shape', type(x))}")
    return x.reshape(x.shape[0], -1), FlattenCache(tuple(x.shape))


def flatten_backward(dout, cache: FlattenCache):
    """dx = dout reshaped back to the input's shape."""
    return dout.reshape(cache.x_shape)
