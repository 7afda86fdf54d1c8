"""Classifier heads: what sits on top of the embedding network during training only.

A head owns its classifier layer and its loss, and takes the labels in its
forward pass, because margin losses need them to place the margin:

    loss = head.forward(embeddings, labels)    # Python float, batch mean
    d_embeddings = head.backward()
    head.scores                                # margin-free scores of the last forward
    head.set_step(step)                        # per-iteration schedules (margin ramps, ...)

``scores`` are the logits without any margin (cosines for the cosine heads), so
their argmax is the classification accuracy to log: the loss itself is inflated
by the margin and is a poor progress signal (reference §2).
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module
from .layers import CosineLinear, Layer, Linear
from .losses import AMSoftmaxLoss, SoftmaxCrossEntropyLoss


class Head(Layer):
    """A classifier layer followed by a loss; subclasses set ``self.classifier`` and ``self.loss``."""

    classifier: Layer
    loss: object

    def children(self):
        return [("classifier", self.classifier)]

    def set_step(self, step: int) -> None:
        """Called by the trainer before each step; fixed heads have nothing to schedule."""

    def forward(self, embeddings, labels) -> float:
        self.scores = self.classifier.forward(embeddings)
        self.labels = labels
        self._cache = True
        return self.loss.forward(self.scores, labels)

    def backward(self):
        """dLoss/d(embeddings) for the last forward; fills the classifier's grads."""
        self._last_cache()
        return self.classifier.backward(self.loss.backward())

    def target_scores(self):
        """Margin-free score of the true class for each sample of the last forward, (N,)."""
        xp = get_array_module(self.scores)
        return self.scores[xp.arange(self.scores.shape[0]), self.labels]


class AMSoftmaxHead(Head):
    """Cosine layer + AM-Softmax: z = s (cos θ − m·onehot(y)).

    margin_ramp: if given (γ > 0), the margin grows as m(t) = min(m, γ·t), a warm-up
    that helps margin losses start on hard data (reference §2, §7).
    conditional_margin: subtract m only where cos θ_y > m (the authors' Caffe rule).
    """

    def __init__(self, embedding_size, num_classes, m=0.35, s=30.0, margin_ramp=None,
                 conditional_margin=False, dtype=np.float32, rng=None):
        super().__init__()
        self.classifier = CosineLinear(embedding_size, num_classes, dtype=dtype, rng=rng)
        self.loss = AMSoftmaxLoss(m=m, s=s, conditional=conditional_margin)
        self.final_margin = float(m)
        if margin_ramp is not None and not margin_ramp > 0:
            raise ValueError(f"AMSoftmaxHead: margin_ramp must be > 0, got {margin_ramp}")
        self.margin_ramp = margin_ramp

    def set_step(self, step: int) -> None:
        if self.margin_ramp is not None:
            self.loss.m = min(self.final_margin, self.margin_ramp * step)


class SoftmaxHead(Head):
    """Plain linear layer with bias + softmax cross-entropy (the baseline)."""

    def __init__(self, embedding_size, num_classes, dtype=np.float32, rng=None):
        super().__init__()
        self.classifier = Linear(embedding_size, num_classes, dtype=dtype, rng=rng)
        self.loss = SoftmaxCrossEntropyLoss()


class TrainingModel(Layer):
    """The embedding network and its classifier head, for walking all parameters by name
    ("net.0.weight", "head.classifier.weight") in the optimizer and the checkpoint."""

    def __init__(self, net, head):
        super().__init__()
        self.net, self.head = net, head

    def children(self):
        return [("net", self.net), ("head", self.head)]


LOSSES = ("am-softmax", "softmax")


def build_head(loss, embedding_size, num_classes, m=0.35, s=30.0, margin_ramp=None,
               conditional_margin=False, dtype=np.float32, rng=None) -> Head:
    """The head for a loss name in LOSSES; m, s, margin_ramp and conditional_margin apply
    to margin losses only."""
    if loss == "am-softmax":
        return AMSoftmaxHead(embedding_size, num_classes, m, s, margin_ramp, conditional_margin,
                             dtype, rng)
    if loss == "softmax":
        return SoftmaxHead(embedding_size, num_classes, dtype, rng)
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
