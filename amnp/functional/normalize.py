"""L2 normalisation of rows and the cosine layer built on it (derivation: docs/derivations.md#cosine-layer).

Norms carry an ε inside the square root, ‖v‖_ε = sqrt(Σ v² + ε), so a zero
vector maps to zero instead of NaN.  The gradients below are exact for that
ε-norm (not an approximation that ignores ε):

    y = v / ‖v‖_ε   =>   dL/dv = (g − y (y·g)) / ‖v‖_ε,   g = dL/dy.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import floating_array, same_dtype

DEFAULT_EPS = 1e-12


class L2NormalizeCache(NamedTuple):
    y: object     # (N, D) normalised rows
    norm: object  # (N, 1) ‖v‖_ε


def l2_normalize_forward(v, eps=DEFAULT_EPS):
    """v: (N, D) -> y: (N, D), each row divided by its ε-norm sqrt(Σ v² + ε)."""
    floating_array(v, 2, "(N, D)", "l2_normalize")
    if not eps > 0:
        raise ValueError(f"l2_normalize: eps must be > 0 so that zero vectors stay finite, got {eps}")
    xp = get_array_module(v)
    norm = xp.sqrt((v * v).sum(axis=1, keepdims=True) + eps)
    y = v / norm
    return y, L2NormalizeCache(y, norm)


def l2_normalize_backward(dy, cache: L2NormalizeCache):
    """dy: (N, D) -> dv: (N, D) = (dy − y (y·dy)) / ‖v‖_ε, row by row."""
    y, norm = cache
    radial = (y * dy).sum(axis=1, keepdims=True)
    return (dy - y * radial) / norm


class CosineCache(NamedTuple):
    x_hat: object          # (N, D) features, normalised unless normalize_features=False
    w_hat: object          # (C, D) normalised class weights
    x_norm_cache: object   # L2NormalizeCache of the features, or None
    w_norm_cache: object   # L2NormalizeCache of the weights


def cosine_forward(x, w, normalize_features=True, eps=DEFAULT_EPS):
    """Cosine layer: the similarity of each feature to each class weight.

    x: (N, D) features; w: (C, D) class weights (no bias).
    out: (N, C), out[n, j] = cos θ_nj = (x_n/‖x_n‖) · (w_j/‖w_j‖).
    The cache's ``x_norm_cache.norm`` holds the feature norms ‖x_n‖_ε, (N, 1), for the
    losses scaled by them (A-Softmax, AM-Softmax without feature normalisation); their
    gradient comes back as ``dnorm`` in cosine_backward.

    normalize_features=False leaves the features as they are: out[n, j] = ‖x_n‖ cos θ_nj,
    a linear layer with normalised weights and no bias.  It is not the paper's
    "w/o FN" model, which scales the margin too, z = ‖f‖(cos θ − m·[j = y]); that is the
    am-softmax head with normalize_features=False (amnp.heads).
    """
    floating_array(x, 2, "(N, D)", "cosine")
    floating_array(w, 2, "(num_classes, D)", "cosine", "weight")
    same_dtype("cosine", input=x, weight=w)
    get_array_module(x, w)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"cosine: input has {x.shape[1]} features but the weight expects {w.shape[1]}")
    w_hat, w_norm_cache = l2_normalize_forward(w, eps)
    if normalize_features:
        x_hat, x_norm_cache = l2_normalize_forward(x, eps)
    else:
        x_hat, x_norm_cache = x, None
    out = x_hat @ w_hat.T
    return out, CosineCache(x_hat, w_hat, x_norm_cache, w_norm_cache)


def cosine_backward(dout, cache: CosineCache, dnorm=None, input_grad=True):
    """dout = G: (N, C), optionally dnorm: (N, 1) = dL/d‖x_n‖_ε -> (dx (N, D), dw (C, D)).

    dL/dx̂ = G Ŵ and dL/dŴ = Gᵀ X̂, then each goes back through its normalisation.
    The norm's own gradient adds dnorm · x̂ to dx, since ∂‖x‖_ε/∂x = x/‖x‖_ε = x̂.
    dx is None with ``input_grad=False``.
    """
    if cache.x_norm_cache is None and dnorm is not None:
        raise ValueError("cosine: a gradient for the feature norms needs normalize_features=True")
    dw = l2_normalize_backward(dout.T @ cache.x_hat, cache.w_norm_cache)
    if not input_grad:
        return None, dw
    dx_hat = dout @ cache.w_hat
    if cache.x_norm_cache is None:
        dx = dx_hat
    else:
        dx = l2_normalize_backward(dx_hat, cache.x_norm_cache)
        if dnorm is not None:
            dx += dnorm * cache.x_hat
    return dx, dw
