"""Softmax cross-entropy and AM-Softmax (reference §2).

Both return the mean loss over the batch as a 0-d array (it stays on the
device; the loss classes turn it into a Python float).
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import class_labels, finite, floating_array


def log_softmax(z):
    """Row-wise log softmax with the row maximum subtracted first, so exp never overflows
    and probabilities that underflow still have a finite log."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def check_scores_and_labels(scores, labels, where):
    floating_array(scores, 2, "(N, num_classes)", where, "scores")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{where}: scores must hold at least one sample and one class, "
                         f"got shape {tuple(scores.shape)}")
    get_array_module(scores, labels)
    finite(scores, where, "scores")
    class_labels(labels, scores.shape[0], scores.shape[1], where)


class SoftmaxCrossEntropyCache(NamedTuple):
    probs: object   # (N, C) softmax of the logits
    labels: object  # (N,)


def softmax_cross_entropy_forward(logits, labels):
    """logits: (N, C), labels: (N,) ints in [0, C) -> loss = −(1/N) Σ_n log softmax(z_n)[y_n]."""
    check_scores_and_labels(logits, labels, "softmax_cross_entropy")
    return _cross_entropy(logits, labels)


def _cross_entropy(logits, labels):
    """The unchecked core shared with the margin losses, which check their own inputs."""
    xp = get_array_module(logits)
    log_probs = log_softmax(logits)
    n = logits.shape[0]
    loss = -log_probs[xp.arange(n), labels].mean()
    return loss, SoftmaxCrossEntropyCache(xp.exp(log_probs), labels)


def softmax_cross_entropy_backward(dout, cache: SoftmaxCrossEntropyCache):
    """dout: scalar dL_total/dloss -> dlogits: (N, C) = dout · (p − onehot(y)) / N."""
    xp = get_array_module(cache.probs)
    probs, labels = cache
    n = probs.shape[0]
    dlogits = probs.copy()
    dlogits[xp.arange(n), labels] -= 1
    dlogits *= dout / n
    return dlogits


def check_margin_and_scale(m, s, where):
    if not (m >= 0 and m < float("inf")):
        raise ValueError(f"{where}: the margin m must be a finite number >= 0, got {m}")
    if not (s > 0 and s < float("inf")):
        raise ValueError(f"{where}: the scale s must be a finite number > 0, got {s}")


class AMSoftmaxCache(NamedTuple):
    ce_cache: SoftmaxCrossEntropyCache  # of the margin-scaled logits
    s: float


def am_softmax_forward(cos, labels, m=0.35, s=30.0, conditional=False):
    """Additive-margin softmax loss on cosines.

    cos: (N, C) cosines cos θ_nj from a cosine layer; labels: (N,) ints in [0, C).
    z_nj = s (cos_nj − m·[j = y_n]), loss = −(1/N) Σ_n log softmax(z_n)[y_n].
    Only the target column moves; m = 0 gives the normalised softmax (NormFace).

    conditional=True is the rule of the authors' Caffe layer: the margin is subtracted
    only from rows whose target cosine exceeds m.  At initialisation (cos ≈ 0) the loss
    is then the normalised softmax, an implicit warm-up; the price is a jump in the loss
    where cos θ_y crosses m (the gradient is the same on both sides).
    """
    check_margin_and_scale(m, s, "am_softmax")
    check_scores_and_labels(cos, labels, "am_softmax")
    xp = get_array_module(cos)
    rows = xp.arange(cos.shape[0])
    logits = s * cos
    if conditional:
        logits[rows, labels] -= s * m * (cos[rows, labels] > m)
    else:
        logits[rows, labels] -= s * m
    loss, ce_cache = _cross_entropy(logits, labels)
    return loss, AMSoftmaxCache(ce_cache, s)


def am_softmax_backward(dout, cache: AMSoftmaxCache):
    """dout: scalar -> dcos: (N, C) = dout · s (p − onehot(y)) / N.

    ψ(θ) = cos θ − m has derivative 1 with respect to cos θ: no arccos needed.
    """
    return cache.s * softmax_cross_entropy_backward(dout, cache.ce_cache)
