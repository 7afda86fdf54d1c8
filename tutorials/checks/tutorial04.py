"""Checks of Tutorial 4: the cosine layer."""
from __future__ import annotations

import numpy as np

from amnp import functional as F

from .common import _check_derived, _close, _expect_shape, _expect_tuple, _fail, _ok, _rng, _worst, guarded

# amnp's own versions of this tutorial's exercises: an answer that calls one scores 0
IMPLEMENTATIONS = (F.l2_normalize_backward, F.cosine_backward)


def check_l2_normalize_backward(l2_normalize_backward):
    """l2_normalize_backward(dy, v) -> dv for y = v / ||v|| (rows)."""
    l2_normalize_backward = guarded(l2_normalize_backward, "l2_normalize_backward", IMPLEMENTATIONS)
    rng = _rng("l2norm")
    v = rng.standard_normal((4, 5)) * rng.uniform(0.5, 3, (4, 1))
    y, cache = F.l2_normalize_forward(v)
    dy = rng.standard_normal(v.shape)
    want = F.l2_normalize_backward(dy, cache)
    got = _expect_shape(l2_normalize_backward(dy, v), v.shape, "dv")
    if _close(got, want, rtol=1e-6):
        _ok("l2_normalize_backward", "no radial part")
        return
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    if _close(got, dy / norm):
        _fail("dv = dy / ||v||: your dv has a component along v",
              "subtract the radial part: dv = (dy - y (y . dy)) / ||v||; scaling v does not change y")
    if _close(got, want * norm):
        _fail("right direction, wrong size", "divide by ||v|| (row by row)")
    mixed_rows = (dy - y * (y * dy).sum()) / norm   # one projection for the whole batch
    if _close(got, mixed_rows) or _close(got, mixed_rows * norm):
        _fail("the projection mixes rows", "wrong axis: y . dy is one number per row, sum over axis 1 with keepdims")
    _fail(f"dv: relative error {_worst(got, want):.1e}")


def check_cosine_backward(cosine_backward):
    """cosine_backward(dout, x, w) -> (dx, dw) for cos = (x/||x||)(w/||w||)^T."""
    cosine_backward = guarded(cosine_backward, "cosine_backward", IMPLEMENTATIONS)
    rng = _rng("cosine")
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)) * 2
    out, cache = F.cosine_forward(x, w)
    dout = rng.standard_normal(out.shape)
    want_dx, want_dw = F.cosine_backward(dout, cache)
    got = _expect_tuple(cosine_backward(dout, x, w), ("dx", "dw"), "cosine_backward")
    dx = _expect_shape(got[0], x.shape, "dx")
    dw = _expect_shape(got[1], w.shape, "dw", "dw has the weight's shape (C, D): dout^T x_hat")
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    if not _close(dw, want_dw):
        if _close(dw, dout.T @ x_hat):
            _fail("dw is dL/dW_hat, the gradient with respect to the NORMALISED weights",
                  "pass it back through each row's normalisation: (g - w_hat (w_hat . g)) / ||w_j||")
        if _close(dw, dout.T @ x):
            _fail("dw uses the raw features", "the cosine layer multiplies normalised features x_hat")
        _fail(f"dw: relative error {_worst(dw, want_dw):.1e}")
    if not _close(dx, want_dx):
        if _close(dx, dout @ w_hat):
            _fail("dx is dL/dx_hat", "pass it back through the feature normalisation too")
        _fail(f"dx: relative error {_worst(dx, want_dx):.1e}")
    _ok("cosine_backward", "exact gradients for x and W")


def check_eps_normalize_backward(eps_normalize, eps_normalize_backward):
    """eps_normalize_backward(dy, v, eps) -> dv for y = v / sqrt(||v||^2 + eps), checked against
    central differences of ``eps_normalize`` (the forward in the tutorial), at a large eps."""
    eps_normalize_backward = guarded(eps_normalize_backward, "eps_normalize_backward", IMPLEMENTATIONS)
    rng = _rng("epsnorm")
    eps = 0.5
    v = rng.standard_normal((4, 3)) * rng.uniform(0.3, 2, (4, 1))
    norm = lambda v: np.linalg.norm(v, axis=1, keepdims=True)
    r = lambda v: np.sqrt(norm(v) ** 2 + eps)

    def projected(g, v, length):
        u = v / length
        return (g - u * (u * g).sum(axis=1, keepdims=True)) / length

    _check_derived("eps_normalize_backward", lambda v: eps_normalize(v, eps),
                   lambda g, v: eps_normalize_backward(g, v, eps), [v], lambda v: v / r(v), {0: "dv"}, [
        (lambda g, v: projected(g, v, norm(v)),
         "that is exercise 1's formula for eps = 0: with eps, r = sqrt(||v||^2 + eps) replaces ||v|| everywhere"),
        (lambda g, v: g / r(v), "y = v / r(v) and r depends on v too: differentiate r as well"),
    ], rng=rng)
