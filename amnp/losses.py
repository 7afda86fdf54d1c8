"""Loss classes: ``loss = crit.forward(scores, labels)`` (a Python float, the batch mean)
and ``dscores = crit.backward()`` (dLoss/dscores, same shape and backend as the scores)."""
from __future__ import annotations

from . import functional as F
from .functional.margins import check_margin_and_scale


class Loss:
    def __init__(self):
        self._cache = None

    def _last_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        return self._cache

    def __call__(self, scores, labels):
        return self.forward(scores, labels)


class SoftmaxCrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits (N, C) with integer labels (N,)."""

    def forward(self, scores, labels) -> float:
        loss, self._cache = F.softmax_cross_entropy_forward(scores, labels)
        return float(loss)

    def backward(self):
        return F.softmax_cross_entropy_backward(1.0, self._last_cache())


class AMSoftmaxLoss(Loss):
    """AM-Softmax on cosines (N, C): z = s (cos θ − m·onehot(y)), then softmax cross-entropy.

    Defaults are the paper's m = 0.35, s = 30.  m may be changed between steps
    (a margin ramp sets ``loss.m``).  ``conditional=True`` applies the margin only
    where cos θ_y > m, as the authors' Caffe code does (see ``am_softmax_forward``).
    """

    def __init__(self, m=0.35, s=30.0, conditional=False):
        super().__init__()
        check_margin_and_scale(m, s, "AMSoftmaxLoss")
        self.m, self.s, self.conditional = float(m), float(s), bool(conditional)

    def forward(self, scores, labels) -> float:
        loss, self._cache = F.am_softmax_forward(scores, labels, self.m, self.s, self.conditional)
        return float(loss)

    def backward(self):
        return F.am_softmax_backward(1.0, self._last_cache())

    def __repr__(self):
        return f"AMSoftmaxLoss(m={self.m}, s={self.s}, conditional={self.conditional})"
