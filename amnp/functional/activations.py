"""ReLU and PReLU.

Kink convention (both): the point x = 0 belongs to the negative side, so the
subgradient used there is 0 for ReLU and the slope a for PReLU, as in PyTorch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ..validation import floating_array, same_dtype


class ReLUCache(NamedTuple):
    positive: object  # bool mask x > 0, all backward needs


# The masks below are applied by multiplication rather than with where(): on NumPy,
# where() with a random boolean mask is about ten times slower than a multiply.

def relu_forward(x):
    """out = max(x, 0), any shape."""
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"relu: input must be a floating-point array, got {getattr(x, 'dtype', type(x))}")
    xp = get_array_module(x)
    return xp.maximum(x, 0), ReLUCache(x > 0)


def relu_backward(dout, cache: ReLUCache):
    """dx = dout where x > 0, else 0 (subgradient 0 at x = 0)."""
    return dout * cache.positive


class PReLUCache(NamedTuple):
    negative_part: object  # min(x, 0), (N, C, ...): the slope gradient needs it
    slope: object          # (C,) or (1,) broadcast over axis 1
    positive: object       # bool mask x > 0


def _slope_shape(x, weight):
    """Shape that broadcasts one slope per channel (axis 1) over x."""
    return (1, weight.shape[0]) + (1,) * (x.ndim - 2)


def prelu(x, weight):
    """The PReLU value alone, what inference runs: x where x > 0, weight[c] · x elsewhere.

    x: (N, C, ...) with channels on axis 1; weight: (C,) or (1,) (one slope shared) -> out,
    x's shape (and, on NumPy, its memory layout).  On NumPy, when every slope is at most 1,
    it is max(x, weight[c] · x): for x > 0, a·x ≤ x, and for x ≤ 0, a·x ≥ x, so the maximum
    picks the right side in two passes over memory (a product, then a maximum in place)
    instead of four.  Otherwise (a slope above 1, or another backend, where reading the
    slopes back to decide would stall the device) max(x, 0) + weight[c] · min(x, 0).
    Both give the same rounded values for finite x: x itself, or the one product a·x (at
    x = +inf with a slope of exactly 0 the product is NaN, and so is the maximum).
    """
    _check_prelu_inputs(x, weight)
    return _prelu_value(x, weight)


def _prelu_value(x, weight, negative_part=None):
    """:func:`prelu` after its checks; ``negative_part``: min(x, 0), when the caller has it."""
    xp = get_array_module(x, weight)
    slope = weight.reshape(_slope_shape(x, weight))
    if xp is np and bool((weight <= 1).all()):
        out = x * slope
        return np.maximum(out, x, out=out)
    out = xp.maximum(x, 0)
    out += slope * (xp.minimum(x, 0) if negative_part is None else negative_part)  # in place: one array fewer
    return out


def _check_prelu_inputs(x, weight):
    if not hasattr(x, "ndim") or x.ndim < 2:
        raise ValueError(f"prelu: input must have at least 2 dimensions (N, C, ...), got shape {getattr(x, 'shape', None)}")
    floating_array(x, x.ndim, "(N, C, ...)", "prelu")
    floating_array(weight, 1, "(C,)", "prelu", "weight")
    same_dtype("prelu", input=x, weight=weight)
    if weight.shape[0] not in (1, x.shape[1]):
        raise ValueError(
            f"prelu: input has {x.shape[1]} channels but there are {weight.shape[0]} slopes "
            "(expected one per channel, or a single shared slope)"
        )


def prelu_forward(x, weight):
    """Parametric ReLU with one learned slope per channel: (:func:`prelu`, cache).

    x: (N, C, ...) with channels on axis 1; weight: (C,) or (1,) (one slope shared).
    out = x where x > 0, weight[c] · x elsewhere; the cache keeps min(x, 0) and the mask
    x > 0 for backward.
    """
    _check_prelu_inputs(x, weight)
    negative_part = get_array_module(x, weight).minimum(x, 0)
    return _prelu_value(x, weight, negative_part), PReLUCache(negative_part, weight, x > 0)


def prelu_backward(dout, cache: PReLUCache, input_grad=True):
    """-> (dx, dweight).

    dx = dout where x > 0, weight[c] · dout elsewhere (None with ``input_grad=False``);
    dweight[c] = Σ over every axis but 1 of dout · min(x, 0) (summed over all channels
    when the slope is shared).
    """
    negative_part, weight, positive = cache
    slope = weight.reshape(_slope_shape(negative_part, weight))
    dx = dout * (positive + slope * ~positive) if input_grad else None  # exactly 1 or exactly the slope
    dweight = _sum_of_products_per_channel(dout, negative_part)
    if weight.shape[0] == 1:
        dweight = dweight.sum(keepdims=True)
    return dx, dweight


def _sum_of_products_per_channel(a, b):
    """Σ over every axis but 1 of a · b: (N, C, ...) twice -> (C,).

    Each backend gets the formulation it runs fastest.  NumPy's einsum sums the products
    without storing them, one pass over memory (2 to 4 times as fast as a product and a
    sum, measured on SphereFace-20's and the small preset's PReLU shapes, either memory
    layout).  CuPy's einsum is a tensordot: transposing copies and a batched GEMM with one
    output per channel; there a product and a sum over axes (0, 2, ...) is one elementwise
    kernel and one reduction kernel."""
    xp = get_array_module(a, b)
    if xp is np:
        per_sample = (a.shape[0], a.shape[1], -1)  # (N, C, everything else)
        return np.einsum("ncs,ncs->c", a.reshape(per_sample), b.reshape(per_sample))
    return (a * b).sum(axis=(0,) + tuple(range(2, a.ndim)))
