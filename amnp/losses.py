"""Loss classes on scores: ``loss = crit.forward(scores, labels)`` (the batch mean, a 0-d
array on the scores' device) and ``dscores = crit.backward(dout=1.0)`` (dout · dLoss/dscores,
same shape and backend as the scores).

They are layers (amnp.layers.Layer) without parameters, to compose by hand after a
network's last layer.  The trainer uses the heads of amnp.heads instead, which own
their classifier layer and the margin's schedules; both end in the same kernels of
amnp.functional.
"""
from __future__ import annotations

from . import functional as F
from .functional.margins import DEFAULT_SCALE, check_margin_and_scale
from .layers import Layer


class Loss(Layer):
    """A layer whose output is the batch's mean loss; ``backward``'s dout defaults to 1."""

    def backward(self, dout=1.0):
        raise NotImplementedError


class SoftmaxCrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits (N, C) with integer labels (N,)."""

    def forward(self, scores, labels):
        return self._remember(*F.softmax_cross_entropy_forward(scores, labels))

    def backward(self, dout=1.0):
        return F.softmax_cross_entropy_backward(dout, self._last_cache())


class AMSoftmaxLoss(Loss):
    """AM-Softmax on cosines (N, C): z = s (cos θ − m·onehot(y)), then softmax cross-entropy.

    Defaults are the paper's m = 0.35 and amnp's s = 16 (DEFAULT_SCALE, the registry's
    too; docs/results.md says why not the paper's 30).  m may be changed between steps
    (a margin ramp sets ``loss.m``).  ``conditional=True`` applies the margin only
    where cos θ_y > m, as the authors' Caffe code does (see ``am_softmax_forward``).
    """

    def __init__(self, m=0.35, s=DEFAULT_SCALE, conditional=False):
        super().__init__()
        check_margin_and_scale(m, s, "AMSoftmaxLoss")
        self.m, self.s, self.conditional = float(m), float(s), bool(conditional)

    def forward(self, scores, labels):
        return self._remember(*F.am_softmax_forward(scores, labels, self.m, self.s, self.conditional))

    def backward(self, dout=1.0):
        return F.am_softmax_backward(dout, self._last_cache())

    def extra_repr(self) -> str:
        return f"m={self.m}, s={self.s}, conditional={self.conditional}"
