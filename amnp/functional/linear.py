"""Fully connected layer: out = x wᵀ + b."""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import floating_array, same_dtype


class LinearCache(NamedTuple):
    x: object  # (N, D_in): needed for dw
    w: object  # (D_out, D_in): needed for dx
    has_bias: bool


def linear_forward(x, w, b=None):
    """Affine map of a batch of row vectors.

    x: (N, D_in), w: (D_out, D_in) as in PyTorch, b: (D_out,) or None.
    out: (N, D_out) with out = x wᵀ + b.
    """
    floating_array(x, 2, "(N, D_in)", "linear")
    floating_array(w, 2, "(D_out, D_in)", "linear", "weight")
    same_dtype("linear", input=x, weight=w, bias=b)
    get_array_module(x, w, b)
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[1]} features but the weight expects {w.shape[1]}"
        )
    out = x @ w.T
    if b is not None:
        out += b
    return out, LinearCache(x, w, b is not None)


def linear_backward(dout, cache: LinearCache, input_grad=True):
    """dout: (N, D_out) -> (dx (N, D_in), dw (D_out, D_in), db (D_out,) or None).

    dx = dout w, dw = doutᵀ x, db = Σ_n dout; dx is None with ``input_grad=False``.
    """
    dx = dout @ cache.w if input_grad else None
    dw = dout.T @ cache.x
    db = dout.sum(axis=0) if cache.has_bias else None
    return dx, dw, db
