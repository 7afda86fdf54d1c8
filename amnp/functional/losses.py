"""Softmax cross-entropy, the core every margin loss ends in (amnp.functional.margins).

It returns the mean loss over the batch as a 0-d array: it stays on the device.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import get_array_module
from ..validation import class_labels, finite, floating_array, values_checked


def log_softmax(z):
    """Row-wise log softmax with the row maximum subtracted first, so exp never overflows
    and probabilities that underflow still have a finite log."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def check_scores_and_labels(scores, labels, where):
    """Shapes, dtypes and backends always; unless value checks are off
    (amnp.validation.value_checks) also that the scores are finite and the labels in
    range, which reads values back from the device."""
    floating_array(scores, 2, "(N, num_classes)", where, "scores")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{where}: scores must hold at least one sample and one class, "
                         f"got shape {tuple(scores.shape)}")
    get_array_module(scores, labels)
    if values_checked():
        finite(scores, where, "scores")
    class_labels(labels, scores.shape[0], scores.shape[1], where)


class SoftmaxCrossEntropyCache(NamedTuple):
    probs: object   # (N, C) softmax of the logits
    labels: object  # (N,)


def softmax_cross_entropy_forward(logits, labels):
    """logits: (N, C), labels: (N,) ints in [0, C) -> loss = −(1/N) Σ_n log softmax(z_n)[y_n]
    (inputs checked by check_scores_and_labels)."""
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
