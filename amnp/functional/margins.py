"""The margin-softmax family: softmax over cosines with a modified target logit.

Every member (NormFace, AM-Softmax, A-Softmax/SphereFace, ArcFace, the combined
margin) is the same computation.  A cosine layer gives c_nj = cos θ_nj; the
target column's cosine c_ny is replaced by ψ(c_ny); every logit is scaled:

    t_nj = ψ(c_nj) if j = y_n else c_nj,    z_nj = scale_n · t_nj,
    L = −(1/N) Σ_n log softmax(z_n)[y_n].

``scale`` is a fixed s (AM-Softmax, ArcFace, NormFace), a learned s (NormFace's
reference), or the feature norm ‖f_n‖ (A-Softmax, and AM-Softmax "without
feature normalisation", where the features are not normalised and their length
plays the role of s).

The backward pass is the softmax cross-entropy gradient followed by two chain
rules, whatever the member:

    dL/dz_nj = (p_nj − [j = y_n]) / N
    dL/dc_nj = scale_n · dL/dz_nj · (dψ/dc(c_ny) if j = y_n else 1)
    dL/dscale_n = Σ_j dL/dz_nj · t_nj        (summed over n for one shared s)

So a member supplies only ψ and its derivative dψ/dc: the functions below,
each a few lines, each returning ``(ψ(c), dψ/dc(c))`` for an array of target
cosines.  For AM-Softmax dψ/dc = 1, so neither the loss nor its gradient needs
arccos.  The derivations are in docs/derivations.md#margins.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

from ..backend import get_array_module
from .losses import SoftmaxCrossEntropyCache, _cross_entropy, check_scores_and_labels, softmax_cross_entropy_backward

# The smallest sin θ the ArcFace and combined-margin slopes divide by.  Their exact
# slope contains c·sin m / sin θ, which diverges as |c| → 1 (θ → 0 or π); below the
# floor the slope is the one at sin θ = 1e-4 (|c| within 5e-9 of 1), finite (at most
# about 1e4·m1) while the value ψ stays exact.
SIN_FLOOR = 1e-4


def _sine(c):
    """sin θ for θ = arccos c in [0, π], from the cosine alone (rounding may put |c| just above 1)."""
    xp = get_array_module(c)
    return xp.sqrt(xp.maximum(1 - c * c, 0))


def no_margin(c):
    """NormFace and softmax over cosines: ψ(c) = c, dψ/dc = 1."""
    return c, get_array_module(c).ones_like(c)


def additive_margin(c, m, conditional=False):
    """AM-Softmax (= CosFace): ψ(c) = c − m, dψ/dc = 1.

    conditional=True is the rule of the authors' Caffe layer: ψ(c) = c − m·[c > m].
    The slope is 1 on both sides of c = m, but ψ itself jumps by m there, so the loss
    and its gradient jump too: c = m is a point where the loss is not differentiable.
    """
    xp = get_array_module(c)
    shift = m * (c > m) if conditional else m
    return c - shift, xp.ones_like(c)


def arcface_margin(c, m):
    """ArcFace: ψ = cos(θ + m) = c·cos m − sin θ·sin m, with sin θ = √(1 − c²).

    dψ/dc = cos m + c·sin m / sin θ  (differentiate, using d sin θ/dc = −c / sin θ).
    Where θ + m would pass π (c ≤ cos(π − m)), cos(θ + m) turns back up and would
    reward moving away from the class; there the reference falls back to
    ψ = c − m·sin m, dψ/dc = 1.  ψ jumps at that switch (from −1 to −cos m − m sin m).
    The slope divides by max(sin θ, SIN_FLOOR) so it stays finite as c → 1.
    """
    xp = get_array_module(c)
    sin_theta = _sine(c)
    cos_m, sin_m = math.cos(m), math.sin(m)
    angular = c > math.cos(math.pi - m)
    psi = xp.where(angular, c * cos_m - sin_theta * sin_m, c - m * sin_m)
    slope = xp.where(angular, cos_m + c * sin_m / xp.maximum(sin_theta, SIN_FLOOR), 1.0)
    return psi, slope.astype(c.dtype, copy=False)


def combined_margin(c, m1, m2, m3):
    """The combined margin (insightface): ψ = cos(m1·θ + m2) − m3.

    dψ/dc = m1·sin(m1·θ + m2) / sin θ   (chain rule with dθ/dc = −1 / sin θ).
    With m1 = 1 it is computed as ArcFace's c·cos m2 − sin θ·sin m2 without arccos,
    so (1, 0, m3) is exactly AM-Softmax and (1, 0, 0) exactly NormFace; other m1 need
    θ = arccos c.  Unlike ArcFace there is no fallback: for m1·θ + m2 > π the target
    logit is no longer monotone in θ (insightface's combined margin behaves the same).
    The slope divides by max(sin θ, SIN_FLOOR), as ArcFace's.
    """
    xp = get_array_module(c)
    sin_theta = _sine(c)
    safe_sin = xp.maximum(sin_theta, SIN_FLOOR)
    if m1 == 1:
        psi = c * math.cos(m2) - sin_theta * math.sin(m2)
        slope = math.cos(m2) + c * math.sin(m2) / safe_sin
    else:
        angle = m1 * xp.arccos(xp.clip(c, -1, 1)) + m2
        psi = xp.cos(angle)
        slope = m1 * xp.sin(angle) / safe_sin
    return psi - m3, slope.astype(c.dtype, copy=False)


def chebyshev(c, m):
    """T_m(c) = cos(m·arccos c) and its derivative T_m'(c), by the recurrences
    T_{k+1} = 2c·T_k − T_{k−1} and T'_{k+1} = 2T_k + 2c·T'_k − T'_{k−1}
    (m = 2: 2c² − 1, m = 3: 4c³ − 3c, m = 4: 8c⁴ − 8c² + 1)."""
    xp = get_array_module(c)
    t_prev, t = xp.ones_like(c), c
    d_prev, d = xp.zeros_like(c), xp.ones_like(c)
    for _ in range(m - 1):
        t_prev, t, d_prev, d = t, 2 * c * t - t_prev, d, 2 * t + 2 * c * d - d_prev
    return t, d


def sphereface_margin(c, m, lam=0.0):
    """A-Softmax (SphereFace), integer m ≥ 1: ψ(θ) = (−1)^k cos(mθ) − 2k on the sector
    θ ∈ [kπ/m, (k+1)π/m], and the annealed target (ψ + λc) / (1 + λ).

    cos(mθ) = T_m(c), the Chebyshev polynomial, and the sector index k counts the
    boundaries cos(jπ/m), j = 1..m−1, that c lies below: no arccos anywhere.
    dψ/dc = (−1)^k T_m'(c), so the annealed slope is ((−1)^k T_m'(c) + λ) / (1 + λ).
    At a sector boundary both ψ and dψ/dc are continuous: (−1)^k cos(mθ) − 2k = 1 − 2j
    from both sides, and T_m'(c) = m·sin(mθ)/sin θ = 0 there.  This is the exact
    gradient; the reference's Caffe layer deliberately rescales its own backward.
    """
    xp = get_array_module(c)
    boundaries = xp.asarray([math.cos(j * math.pi / m) for j in range(1, m)], dtype=c.dtype)
    k = (c[..., None] < boundaries).sum(axis=-1)
    sign = 1 - 2 * (k % 2)
    t, dt = chebyshev(c, m)
    psi = sign * t - 2 * k
    slope = sign * dt
    return ((psi + lam * c) / (1 + lam)).astype(c.dtype, copy=False), \
        ((slope + lam) / (1 + lam)).astype(c.dtype, copy=False)


class MarginSoftmaxCache(NamedTuple):
    ce_cache: SoftmaxCrossEntropyCache  # softmax of the logits z = scale · t
    modified: object      # (N, C) t: the cosines with the target column replaced by ψ
    target_slope: object  # (N,) dψ/dc at each target cosine
    scale: object         # the scale of the forward pass: a float, or an (N, 1) or (1,) array


def check_scale(scale, num_samples, dtype, where):
    """A fixed scale is a finite number > 0; an array scale has shape (N, 1) (one per
    sample, the feature norms) or (1,) (one learned s) and the cosines' dtype."""
    if hasattr(scale, "shape"):
        if tuple(scale.shape) not in ((num_samples, 1), (1,)):
            raise ValueError(f"{where}: an array scale must have shape ({num_samples}, 1) or (1,), "
                             f"got {tuple(scale.shape)}")
        if scale.dtype != dtype:
            raise TypeError(f"{where}: scale has dtype {scale.dtype} but the cosines {dtype}")
    elif not 0 < scale < math.inf:
        raise ValueError(f"{where}: the scale s must be a finite number > 0, got {scale}")


def margin_softmax_forward(cos, labels, margin: Callable, scale, where="margin_softmax"):
    """Softmax cross-entropy over scaled cosines whose target column is replaced by ψ.

    cos: (N, C) cosines from a cosine layer; labels: (N,) ints in [0, C);
    margin: c_y (N,) -> (ψ(c_y), dψ/dc(c_y)), one of the functions above with its
    options bound; scale: float s, (N, 1) feature norms, or a (1,) learned s.
    Returns the mean loss (0-d array, on the device) and the cache.  The inputs are
    checked by check_scores_and_labels (its value checks: amnp.validation.value_checks).
    """
    check_scores_and_labels(cos, labels, where)
    check_scale(scale, cos.shape[0], cos.dtype, where)
    xp = get_array_module(cos)
    rows = xp.arange(cos.shape[0])
    psi, slope = margin(cos[rows, labels])
    modified = cos.copy()
    modified[rows, labels] = psi
    loss, ce_cache = _cross_entropy(scale * modified, labels)
    return loss, MarginSoftmaxCache(ce_cache, modified, slope, scale)


def margin_softmax_backward(dout, cache: MarginSoftmaxCache):
    """dout: scalar -> (dcos (N, C), dscale).

    dcos = scale · dL/dz with the target column multiplied by dψ/dc; dscale has the
    shape of the scale ((N, 1) or (1,)), or is None for a fixed float s.
    """
    xp = get_array_module(cache.modified)
    dz = softmax_cross_entropy_backward(dout, cache.ce_cache)
    dcos = cache.scale * dz
    rows = xp.arange(dcos.shape[0])
    dcos[rows, cache.ce_cache.labels] *= cache.target_slope
    dscale = None
    if hasattr(cache.scale, "shape"):
        per_sample = (dz * cache.modified).sum(axis=1, keepdims=True)
        dscale = per_sample if cache.scale.shape == per_sample.shape else per_sample.sum(axis=0)
    return dcos, dscale


# The default scale of every fixed-s member, here, in AMSoftmaxLoss and in the loss registry
# (amnp.config.LOSSES): 16, not the paper's 30, which learned more slowly on the glyph
# dataset's 501 classes (docs/results.md, "Why s is 16, not the paper's 30").
DEFAULT_SCALE = 16.0


def check_margin_and_scale(m, s, where):
    if not (m >= 0 and m < math.inf):
        raise ValueError(f"{where}: the margin m must be a finite number >= 0, got {m}")
    if not (s > 0 and s < math.inf):
        raise ValueError(f"{where}: the scale s must be a finite number > 0, got {s}")


def am_softmax_forward(cos, labels, m=0.35, s=DEFAULT_SCALE, conditional=False):
    """AM-Softmax on cosines: the margin-softmax core with ψ(c) = c − m and a fixed s.

    cos: (N, C) cosines; labels: (N,) ints in [0, C).
    z_nj = s (cos_nj − m·[j = y_n]), loss = −(1/N) Σ_n log softmax(z_n)[y_n].
    Only the target column moves; m = 0 gives the normalised softmax (NormFace).
    conditional=True subtracts m only where cos θ_y > m (see additive_margin: the
    loss jumps where cos θ_y crosses m).
    """
    check_margin_and_scale(m, s, "am_softmax")
    return margin_softmax_forward(cos, labels, lambda c: additive_margin(c, m, conditional), s,
                                  "am_softmax")


def am_softmax_backward(dout, cache: MarginSoftmaxCache):
    """dout: scalar -> dcos: (N, C) = dout · s (p − onehot(y)) / N (ψ' = 1: no arccos)."""
    dcos, _ = margin_softmax_backward(dout, cache)
    return dcos
